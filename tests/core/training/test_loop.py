"""The one outer loop (cprec_core.training.loop.run_steps) on a toy recipe: the settings it
is given are the ones applied, a resume cuts the log back, progress lines are throttled."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from cprec_core.layout import TrainedAdapter
from cprec_core.tracking import NULL_TRACKER
from cprec_core.training import loop


class ToyRecipe:
    """A linear model fitting y = 2x: the smallest thing with a recipe's shape."""

    label = "toy"

    def __init__(self, run: TrainedAdapter, total_steps: int, start_step: int = 0):
        torch.manual_seed(0)
        self.accelerator = Accelerator(cpu=True)
        self.model = torch.nn.Linear(1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
        self.run, self.total_steps, self.start_step = run, total_steps, start_step
        self.reporter = type("R", (), {"lines": [], "log": lambda s, line: s.lines.append(line)})()
        self.tracker = NULL_TRACKER  # the Recipe protocol: tracking off
        self.checkpoints, self.clips, self.finals = [], [], 0

    def train_step(self, step: int) -> dict:
        x = torch.full((4, 1), float(step + 1))
        loss = ((self.model(x) - 2 * x) ** 2).mean()
        loss.backward()
        return {"phase": "only", "loss": float(loss), "tokens": 4}

    def save_checkpoint(self, step: int) -> None:
        self.checkpoints.append(step)

    def save_final(self) -> dict:
        self.finals += 1
        return {"final_loss": loop.read_log(self.run.train_log)[-1]["loss"]}


def test_run_steps_applies_the_given_schedule_and_clip(tmp_path, monkeypatch):
    run = TrainedAdapter(tmp_path / "run")
    run.path.mkdir()
    recipe = ToyRecipe(run, total_steps=5)
    monkeypatch.setattr(recipe.accelerator, "clip_grad_norm_",
                        lambda params, norm: recipe.clips.append(norm))
    after = []
    result = loop.run_steps(recipe, checkpoint_every=2, grad_clip=0.5, after_step=after.append)
    assert result["finished"] and result["steps_run"] == 5 and recipe.finals == 1
    assert recipe.checkpoints == [2, 4, 5]  # every 2 steps and the last
    assert recipe.clips == [0.5] * 5 and after == [1, 2, 3, 4, 5]
    rows = loop.read_log(run.train_log)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert {"phase", "loss", "tokens", "lr", "seconds"} <= set(rows[0])
    assert result["final_loss"] == rows[-1]["loss"]
    # steps take microseconds: one line for the first step, one for the last
    assert [line.split(" step ")[1].split()[0] for line in recipe.reporter.lines] == ["1/5", "5/5"]
    assert recipe.reporter.lines[0].startswith("toy step 1/5 only lr 1.00e-01 loss")


def test_a_resumed_run_cuts_what_came_after_its_checkpoint(tmp_path):
    run = TrainedAdapter(tmp_path / "run")
    run.path.mkdir()
    stopped = loop.run_steps(ToyRecipe(run, 5), 10, 0.0, stop_after=4)
    assert not stopped["finished"] and stopped["steps_run"] == 4
    forgotten = []
    resumed = ToyRecipe(run, 5, start_step=2)  # its newest checkpoint was at step 2
    result = loop.run_steps(resumed, 10, 0.0, forget_after=forgotten.append)
    assert result["finished"] and result["steps_run"] == 3 and forgotten == [2]
    assert [json.loads(x)["step"] for x in run.train_log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert resumed.checkpoints == [5]


def test_publish_run_writes_the_manifest_last(tmp_path):
    from cprec_core.layout import RunManifest

    run = TrainedAdapter(tmp_path / "run")
    run.path.mkdir()
    (run.adapter).mkdir()
    (run.adapter / "old.txt").write_text("old")

    def write(staged: TrainedAdapter) -> None:
        assert not run.manifest.exists()  # nothing announces the run while it is written
        staged.adapter.mkdir()
        (staged.adapter / "adapter_model.safetensors").write_text("new")
        staged.projector.write_text("p")

    loop.publish_run(run, write, RunManifest(kind="cpt", base_model="tiny", steps=1))
    assert sorted(p.name for p in run.adapter.iterdir()) == ["adapter_model.safetensors"]
    assert run.projector.read_text() == "p" and not run.scratch.exists()
    assert run.read_manifest().kind == "cpt"


def test_a_short_run_trains_at_the_peak_rate_a_long_one_warms_up_and_decays():
    def rates(total: int) -> tuple[str, list[float]]:
        optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
        scheduler, name = loop.lr_schedule(optimizer, total, warmup_ratio=0.05,
                                           min_lr_ratio=0.01, constant_below=50)
        out = []
        for _ in range(total):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return name, out

    name, short = rates(10)
    assert name == "constant" and short == [0.1] * 10
    name, long = rates(100)  # 5 warmup steps from 1 % of the peak, then cosine down to 1 % of the peak
    assert name == "warmup-cosine" and long[0] < 0.01 and max(long) == pytest.approx(0.1)
    assert long[-1] < 0.01 and long == sorted(long[:6]) + long[6:]
