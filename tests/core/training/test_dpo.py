"""DPO after SFT on the tiny model: pairs mined once and reused, the policy starting exactly
at the reference, the per-step log, kill-and-resume giving the same adapter, and the result
loading as an SFT-style system."""

import dataclasses
import json
import math
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from cprec_core.evaluation.llm import LLMScorer
from cprec_core.progress import Reporter
from cprec_core.training.dpo import DPOTrainer, run as run_dpo
from cprec_core.training.dpo_pairs import ensure_pairs
from cprec_core.training.sft import SFTError, run as run_sft


class Lines(Reporter):
    def __init__(self):
        super().__init__()
        self.lines = []

    def log(self, message):
        self.lines.append(message)


@pytest.fixture
def dpo_profile(sft_profile):
    profile = dataclasses.replace(sft_profile, dpo=dataclasses.replace(
        sft_profile.dpo, systems=("cprec_dpo",), max_windows=6, batch_size=2, micro_batch=1,
        checkpoint_every=1, hard_negatives=1, random_negatives=1, beta=0.5, lr=1e-3,
        grad_clip=0.25))  # both differ from sft's (checkpoint_every 2, grad_clip 1.0)
    run_sft(profile, "crime", "cprec_rank", seeds=(0,))
    return profile


def adapter_of(profile):
    run = profile.layout.sft_run("cprec_dpo", "crime", 0)
    return load_file(run.adapter_weights)


def test_dpo_starts_at_the_reference_and_resumes_to_the_same_adapter(dpo_profile, tmp_path):
    profile = dpo_profile
    lines = Lines()
    info = ensure_pairs(profile, "crime", "cprec_dpo", 0, lines)
    run = profile.layout.sft_run("cprec_dpo", "crime", 0)
    pairs = pq.read_table(run.pairs)
    assert info["summary"]["pairs"] == len(pairs) == 12  # 6 windows x (1 hard + 1 random)
    assert set(pairs.column("kind").to_pylist()) == {"hard", "random"}
    assert ensure_pairs(profile, "crime", "cprec_dpo", 0, lines) == info  # reused
    assert "stored pairs reused" in lines.lines[-1]

    # the policy starts exactly where the stored reference scores were taken (the scorer's
    # tree and the trainer's, both reading each answer after its candidate's vector)
    trainer = DPOTrainer(profile, "crime", "cprec_dpo", Lines(), 0)
    trainer.setup()
    assert trainer.pair_inputs(trainer.windows[:1]).candidate_slots is not None
    trainer.model.eval()
    with torch.no_grad():
        scores = trainer.policy_scores(trainer.pair_inputs(trainer.windows))
    ref = torch.tensor([[w.ref_chosen, *w.ref_rejected] for w in trainer.windows])
    assert torch.allclose(scores, ref, atol=1e-3)
    # DPO's own grad_clip is the one its loop applies (it was sft's before)
    clipped = []
    trainer.accelerator.clip_grad_norm_ = lambda params, norm: clipped.append(norm)
    assert not trainer.train(stop_after=1)["finished"]
    assert clipped == [0.25] and profile.sft.grad_clip != 0.25
    del trainer
    shutil.rmtree(run.checkpoints)  # that step is not part of the runs compared below
    run.train_log.unlink()

    # killed after 1 step: DPO's checkpoint_every (1, not sft's 2) left a checkpoint there
    assert not run_dpo(profile, "crime", "cprec_dpo", Lines(), stop_after=1)["finished"]
    assert [p.name for p in run.checkpoints.glob("step-*")] == ["step-000001"]
    # killed again after step 2, resumed, against one uninterrupted run
    result = run_dpo(profile, "crime", "cprec_dpo", Lines(), stop_after=1)
    assert not result["finished"]
    resumed = run_dpo(profile, "crime", "cprec_dpo", Lines())
    assert resumed["finished"]
    first = adapter_of(profile)
    rows = [json.loads(x) for x in run.train_log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 4))  # 6 windows, 2 per step
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=2e-3)  # policy == reference
    assert {"margin", "accuracy", "chosen_reward", "pairs"} <= set(rows[0])
    manifest = json.loads(run.manifest.read_text())
    assert manifest["objective"] == "dpo" and manifest["sft_system"] == "cprec_rank"
    assert manifest["pairs_sha256"] and manifest["pair_summary"]["pairs"] == 12

    shutil.rmtree(run.checkpoints)
    run.adapter_weights.unlink()
    straight = run_dpo(profile, "crime", "cprec_dpo", Lines())
    assert straight["finished"]
    again = adapter_of(profile)
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    # the sft adapter itself is untouched, and DPO moved away from it
    sft = load_file(profile.layout.sft_run("cprec_rank", "crime", 0).adapter_weights)
    assert any(not torch.equal(sft[k], again[k]) for k in sft)

    scorer = LLMScorer.load(profile, "crime", "cprec_dpo")
    assert scorer.hybrid


def test_dpo_needs_its_sft_adapter(sft_profile):
    with pytest.raises(SFTError, match="no cprec_rank adapter"):
        ensure_pairs(sft_profile, "crime", "cprec_dpo", 0, Reporter(False))
    with pytest.raises(SFTError, match="not a DPO system"):
        DPOTrainer(sft_profile, "crime", "cprec_rank")
