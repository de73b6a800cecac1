"""Damaged checkpoints: every file of the newest checkpoint truncated in turn, the trainer
reports the file, falls back to the previous checkpoint and ends with exactly the weights of
an uninterrupted run; all damaged starts over; a crash mid-save leaves no step folder;
checkpoints without checksums (older versions) still load. Unit level on a tiny peft model,
end to end on the tiny CPT and SFT runs."""

import dataclasses
import json
import random
import shutil

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import get_wsd_schedule

from cprec_core.config import load_config_file
from cprec_core.data.build import main as build_corpus
from cprec_core.progress import Reporter
from cprec_core.training import checkpointing
from cprec_core.training.checkpointing import DamagedCheckpoint
from cprec_core.training.cpt import run as run_cpt
from cprec_core.training.sft import run as run_sft

KINDS = {  # every file a checkpoint holds
    "adapter weights": "adapter/adapter_model.safetensors",
    "adapter config": "adapter/adapter_config.json",
    "optimizer": "optimizer.pt",
    "scheduler": "scheduler.pt",
    "rng": "rng_state.pt",
    "trainer state": "trainer_state.json",
    "extra tensors": "extra.safetensors",
}


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


class Lines(Reporter):
    def __init__(self):
        super().__init__(enabled=False)
        self.lines = []

    def log(self, message: str) -> None:
        self.lines.append(message)


# -- unit level: a tiny peft model, optimiser, scheduler, RNGs and an extra module -----------
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, 1)

    def forward(self, x):
        return self.out(torch.relu(self.lin(x)))


class Trainer:
    """What CPT and SFT checkpoint, in miniature; every step draws from every RNG."""

    def __init__(self):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        self.model = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["lin"],
                                                       lora_dropout=0.2, init_lora_weights=False))
        self.projector = torch.nn.Linear(3, 3)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params + list(self.projector.parameters()), lr=1e-2)
        self.scheduler = get_wsd_schedule(self.optimizer, num_warmup_steps=2, num_stable_steps=2,
                                          num_decay_steps=4, decay_type="cosine")
        self.curriculum = np.random.default_rng(1)
        self.step = 0

    def train(self, until: int, root=None, every: int = 2) -> None:
        self.model.train()
        while self.step < until:
            x = (torch.randn(4, 6) + random.random() + float(np.random.rand())
                 + float(self.curriculum.random()))
            loss = self.model(x).pow(2).mean() + self.projector(x[:, :3]).pow(2).mean()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if root is not None and self.step % every == 0:
                checkpointing.save(root, self.step, {"plan": "p"}, self.model, self.optimizer,
                                   self.scheduler, extra=self.projector.state_dict(),
                                   generators={"curriculum": self.curriculum})

    def load(self, root, log):
        found = checkpointing.load(root, "p", lambda c: checkpointing.restore(
            c, self.model, self.optimizer, self.scheduler, {"curriculum": self.curriculum},
            extra_module=self.projector), log)
        self.step = 0 if found is None else found.step
        return found

    def weights(self) -> dict[str, torch.Tensor]:
        return {**{k: v.clone() for k, v in get_peft_model_state_dict(self.model).items()},
                **{f"projector.{k}": v.clone() for k, v in self.projector.state_dict().items()}}

    def everything(self) -> dict:
        """Weights, optimiser and scheduler state and the next draw of every RNG (drawn
        from copies: the state stays as it is)."""
        rng = (random.getstate(), torch.get_rng_state(), np.random.get_state(),
               self.curriculum.bit_generator.state)
        draws = (random.random(), torch.rand(1).item(), np.random.rand(), self.curriculum.random())
        random.setstate(rng[0]), torch.set_rng_state(rng[1]), np.random.set_state(rng[2])
        self.curriculum.bit_generator.state = rng[3]
        return {"weights": self.weights(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "draws": draws}


def assert_same(a, b):
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Checkpoints at steps 2 and 4 of an 8-step run (KEEP_CHECKPOINTS = 2), and the
    weights at its end."""
    root = tmp_path_factory.mktemp("reference") / "checkpoints"
    trainer = Trainer()
    trainer.train(4, root)
    trainer.train(8)
    return root, trainer.weights()


@pytest.fixture
def root(reference, tmp_path):
    shutil.copytree(reference[0], tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


def test_checksums_list_every_file(root):
    folder = root / "step-000004"
    listed = json.loads((folder / "checksums.json").read_text())["files"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"checksums.json"} >= set(KINDS.values())
    for name, entry in listed.items():
        assert entry["size"] == (folder / name).stat().st_size and len(entry["sha256"]) == 64
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000004"]


def test_intact_checkpoint_resumes_exactly(reference, root):
    trainer, lines = Trainer(), []
    assert trainer.load(root, lines.append).step == 4
    assert lines == [f"resumed from {root / 'step-000004'} (step 4)"]
    trainer.train(8)
    for key, value in reference[1].items():
        assert_same(trainer.weights()[key], value)


@pytest.mark.parametrize("kind", [*KINDS, "checksums"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(reference, root, kind):
    name = KINDS.get(kind, "checksums.json")
    truncate(root / "step-000004" / name)
    trainer, lines = Trainer(), []
    assert trainer.load(root, lines.append).step == 2
    assert lines[0].startswith(f"checkpoint step-000004 damaged: {name}: ")
    assert lines[0].endswith("; falling back to step-000002")
    assert lines[1] == f"resumed from {root / 'step-000002'} (step 2)"
    # set aside: not retried, not one of the kept checkpoints
    assert lines[2] == f"moved damaged step-000004 to {root / 'damaged' / 'step-000004'}"
    assert [p.name for p in checkpointing.checkpoint_folders(root)] == ["step-000002"]
    trainer.train(8, root)
    assert [p.name for p in checkpointing.checkpoint_folders(root)] == ["step-000008",
                                                                         "step-000006"]
    for key, value in reference[1].items():
        assert_same(trainer.weights()[key], value)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_without_checksums_load_and_truncation_is_still_caught(reference, root,
                                                                           kind):
    """An older version's checkpoints (no checksums.json) are checked by reading every file."""
    for folder in checkpointing.checkpoint_folders(root):
        (folder / "checksums.json").unlink()
    intact, lines = Trainer(), []
    assert intact.load(root, lines.append).step == 4 and "no checksums.json" in lines[0]
    truncate(root / "step-000004" / KINDS[kind])
    trainer, lines = Trainer(), []
    assert trainer.load(root, lines.append).step == 2
    assert lines[0].startswith(f"checkpoint step-000004 damaged: {KINDS[kind]}: ")
    trainer.train(8)
    for key, value in reference[1].items():
        assert_same(trainer.weights()[key], value)


def test_all_damaged_starts_over_from_a_fresh_state(reference, root):
    truncate(root / "step-000004" / "optimizer.pt")
    truncate(root / "step-000002" / "rng_state.pt")
    fresh = Trainer().everything()
    trainer, lines = Trainer(), []
    assert trainer.load(root, lines.append) is None and trainer.step == 0
    assert lines[0].startswith("checkpoint step-000004 damaged: optimizer.pt: ")
    assert lines[0].endswith("(truncated); falling back to step-000002")
    assert lines[1].startswith("checkpoint step-000002 damaged: rng_state.pt: ")
    assert lines[1].endswith("; no intact checkpoint left: starting over from step 0")
    assert not checkpointing.checkpoint_folders(root)
    now = trainer.everything()
    assert now["optimizer"] == fresh["optimizer"] and now["draws"] == fresh["draws"]
    for key, value in fresh["weights"].items():
        assert_same(now["weights"][key], value)
    trainer.train(8)
    for key, value in reference[1].items():
        assert_same(trainer.weights()[key], value)


def test_a_failure_while_applying_leaves_the_state_untouched(reference, root):
    """A file that reads but does not fit (here an RNG file without the curriculum's
    generator, in an older unchecksummed checkpoint) fails after the adapter, optimiser and
    scheduler were set: they are put back before the previous checkpoint is tried."""
    folder = root / "step-000004"
    (folder / "checksums.json").unlink()
    rng = torch.load(folder / "rng_state.pt", weights_only=True)
    rng["generators"] = {}
    torch.save(rng, folder / "rng_state.pt")
    trainer = Trainer()
    before = trainer.everything()
    with pytest.raises(DamagedCheckpoint, match="rng_state.pt: KeyError"):
        checkpointing.restore(checkpointing.read(folder), trainer.model, trainer.optimizer,
                              trainer.scheduler, {"curriculum": trainer.curriculum},
                              extra_module=trainer.projector)
    after = trainer.everything()
    assert after["optimizer"] == before["optimizer"] and after["draws"] == before["draws"]
    assert after["scheduler"] == before["scheduler"]
    for key, value in before["weights"].items():
        assert_same(after["weights"][key], value)
    lines = []
    assert trainer.load(root, lines.append).step == 2
    assert lines[0].startswith("checkpoint step-000004 damaged: rng_state.pt: KeyError")
    trainer.train(8)
    for key, value in reference[1].items():
        assert_same(trainer.weights()[key], value)


def test_crash_mid_save_leaves_no_step_folder(reference, root, monkeypatch):
    trainer = Trainer()
    trainer.load(root, lambda _: None)
    real_save = torch.save

    def crash(obj, path, *args, **kwargs):
        if str(path).endswith("scheduler.pt"):
            raise KeyboardInterrupt  # killed while writing
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(6, root)
    monkeypatch.undo()
    assert [p.name for p in checkpointing.checkpoint_folders(root)] == ["step-000004",
                                                                         "step-000002"]
    assert (root / ".step-000006.tmp").is_dir()  # the partial save is never loaded
    resumed, lines = Trainer(), []
    assert resumed.load(root, lines.append).step == 4
    assert not (root / ".step-000006.tmp").exists()
    resumed.train(8)
    for key, value in reference[1].items():
        assert_same(resumed.weights()[key], value)


def test_another_plan_still_discards_the_checkpoints(root):
    lines = []
    assert checkpointing.load(root, "other", lambda c: None, lines.append) is None
    assert lines == [f"checkpoints in {root} are from another plan (p != other): starting over"]
    assert not root.exists()


# -- end to end: the tiny CPT and SFT runs ------------------------------------------------------
@pytest.fixture
def cpt_profile(tmp_path, fixture_config):
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]) == 0
    return dataclasses.replace(load_config_file(fixture_config), data_dir=str(tmp_path / "data"))


def test_cpt_resumes_past_damaged_checkpoints_to_the_same_adapter(cpt_profile):
    """The newest checkpoint damaged: resumed from the one before; all damaged: from step 0.
    Either way the adapter and the log are those of the uninterrupted run."""
    straight = run_cpt(cpt_profile, "wsa")
    reference = load_file(cpt_profile.layout.cpt_adapter("wsa").adapter_weights)
    reference_log = cpt_profile.layout.cpt_adapter("wsa").train_log.read_text().splitlines()
    every = cpt_profile.cpt.checkpoint_every
    assert straight["steps"] > 2 * every + 1
    for damage in ("newest", "all"):
        other = dataclasses.replace(cpt_profile, name=f"resumed_{damage}")
        shutil.copytree(cpt_profile.layout.corpus_dir, other.layout.corpus_dir)
        assert not run_cpt(other, "wsa", stop_after=2 * every + 1)["finished"]
        out = other.layout.cpt_adapter("wsa")
        newest, older = checkpointing.checkpoint_folders(out.checkpoints)
        truncate(newest / "optimizer.pt")
        if damage == "all":
            truncate(older / "adapter" / "adapter_model.safetensors")
        reporter = Lines()
        resumed = run_cpt(other, "wsa", reporter)
        damaged = [x for x in reporter.lines if " damaged: " in x]
        assert damaged[0].startswith(f"checkpoint {newest.name} damaged: optimizer.pt: ")
        if damage == "newest":
            assert damaged[0].endswith(f"falling back to {older.name}")
            assert resumed["steps_run"] == straight["steps"] - every
        else:
            assert damaged[1].startswith(
                f"checkpoint {older.name} damaged: adapter/adapter_model.safetensors: ")
            assert damaged[1].endswith("no intact checkpoint left: starting over from step 0")
            assert resumed["steps_run"] == straight["steps"]
        assert resumed["finished"]
        adapter = load_file(out.adapter_weights)
        assert adapter.keys() == reference.keys()
        for key in reference:
            assert_same(adapter[key], reference[key])
        rows = [json.loads(x) for x in out.train_log.read_text().splitlines()]
        assert [r["loss"] for r in rows] == [json.loads(x)["loss"] for x in reference_log]


def test_sft_falls_back_past_a_damaged_projector_to_the_same_weights(sft_profile):
    total = run_sft(sft_profile, "crime", "llara")["steps"]
    out = sft_profile.layout.sft_run("llara", "crime", 0)
    reference = {**load_file(out.adapter_weights), **load_file(out.projector)}
    shutil.rmtree(out.path)
    assert not run_sft(sft_profile, "crime", "llara", stop_after=4)["finished"]  # ckpts 2, 4
    truncate(out.checkpoints / "step-000004" / "extra.safetensors")
    reporter = Lines()
    assert run_sft(sft_profile, "crime", "llara", reporter)["steps_run"] == total - 2
    assert any(x.startswith("checkpoint step-000004 damaged: extra.safetensors: ")
               and x.endswith("falling back to step-000002") for x in reporter.lines)
    resumed = {**load_file(out.adapter_weights), **load_file(out.projector)}
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert_same(resumed[key], reference[key])


def test_rank_sft_falls_back_to_the_same_selected_weights_and_curve(sft_profile):
    """Model selection: the validation log and the best adapters are cut back to the step of
    the checkpoint actually used, so the fallback selects the same weights."""
    rank = dataclasses.replace(sft_profile.sft.rank, epochs=2, max_samples=8, select_every=2)
    profile = dataclasses.replace(sft_profile, sft=dataclasses.replace(
        sft_profile.sft, rank=rank, validation_cases=6))
    run_sft(profile, "crime", "cprec_rank")
    out = profile.layout.sft_run("cprec_rank", "crime", 0)
    reference = {**load_file(out.adapter_weights), **load_file(out.projector)}
    curve = out.validation_log.read_text()
    shutil.rmtree(out.path)
    assert not run_sft(profile, "crime", "cprec_rank", stop_after=7)["finished"]  # ckpts 4, 6
    truncate(out.checkpoints / "step-000006" / "trainer_state.json")
    reporter = Lines()
    assert run_sft(profile, "crime", "cprec_rank", reporter)["steps_run"] == 4
    assert any(x.startswith("checkpoint step-000006 damaged: trainer_state.json: ")
               for x in reporter.lines)
    assert out.validation_log.read_text() == curve
    resumed = {**load_file(out.adapter_weights), **load_file(out.projector)}
    for key in reference:
        assert_same(resumed[key], reference[key])
