"""Cached base checkpoints: trainers started side by side may build the same one at once."""

from pathlib import Path

import pytest

from cprec_core.models.loader import ModelLoadError, _publish, _scratch, resolve_device


def fake_checkpoint(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(text)
    return folder


def test_the_first_published_checkpoint_wins_and_the_others_are_removed(tmp_path):
    target = tmp_path / "models" / "smollm2-135m"
    first = fake_checkpoint(_scratch(target).with_name("a.tmp-1"), "first")
    second = fake_checkpoint(_scratch(target).with_name("b.tmp-2"), "second")
    _publish(first, target)
    _publish(second, target)  # another process got there first: keep its copy
    assert (target / "model.safetensors").read_text() == "first"
    assert not first.exists() and not second.exists()
    assert _scratch(target).name.startswith("smollm2-135m.tmp-")


def test_a_failed_publish_without_a_checkpoint_in_place_is_an_error(tmp_path):
    target = tmp_path / "m"
    (target / "junk").mkdir(parents=True)  # a folder in the way, but no checkpoint in it
    with pytest.raises(OSError):
        _publish(fake_checkpoint(tmp_path / "m.tmp-1", "x"), target)


def test_device_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        resolve_device("cuda")
