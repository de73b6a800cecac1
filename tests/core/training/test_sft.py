"""SFT on the tiny model: LoRA from the CPT adapter or fresh, the curriculum in the log, and
kill-and-resume giving the same adapter and projector."""

import dataclasses
import json
import shutil

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cprec_core.config import GRU4RecConfig
from cprec_core.data.domain_users import load_domain_data
from cprec_core.data.db import connect
from cprec_core.evaluation.evaluate import evaluate_domain, fuse
from cprec_core.recommend.full_ranking import pipeline_label
from cprec_core.recommend.pipeline import choose_reranker
from cprec_core.metrics import one_se_choice, reciprocal_ranks
from cprec_core.models.hybrid import residual_scores
from cprec_core.training.hybrid_run import validate
from cprec_core.training.next_item import train_next_item
from cprec_core.training.residual import keep_gate
from cprec_core.training.sft import SFTError, SFTTrainer, run


@pytest.fixture
def profile(sft_profile):
    return sft_profile


def test_cprec_starts_from_the_cpt_adapter_and_llara_from_scratch(profile):
    cpt = load_file(profile.layout.cpt_adapter("wsa").adapter_weights)
    for system, from_cpt in (("cprec", True), ("llara", False)):
        trainer = SFTTrainer(profile, "crime", system)
        trainer.setup()
        state = {k.replace(".default", ""): v for k, v in trainer.peft_model.state_dict().items()
                 if "lora_" in k}
        b_weights = [k for k in cpt if "lora_B" in k]
        assert b_weights
        for key in b_weights:
            same = torch.equal(state[key].float(), cpt[key].float())
            assert same == from_cpt, (system, key)


def test_sft_logs_the_curriculum_and_writes_adapter_and_projector(profile):
    result = run(profile, "crime", "cprec")
    out = profile.layout.sft_run("cprec", "crime", 0).path
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    total = result["steps"]
    assert result["finished"] and len(rows) == total >= 4
    assert [r["p_hybrid"] for r in rows] == [round(s / total, 4) for s in range(total)]
    assert rows[0]["prompt"] == "text"  # probability 0 at the first step
    # fewer steps than sft.constant_below: the peak rate on every step, said in the log
    assert {(r["schedule"], r["lr"]) for r in rows} == {("constant", profile.sft.lr)}
    assert {"hybrid", "text"} >= {r["prompt"] for r in rows}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert set(load_file(out / "projector.safetensors")) == {
        "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "log_temperature",
        "residual_weight"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["init_adapter"].endswith("cpt/wsa/adapter")
    assert manifest["samples"] == sum(r["samples"] for r in rows) <= 24


def test_killed_sft_resumes_to_the_same_weights(profile):
    total = run(profile, "crime", "llara")["steps"]
    out = profile.layout.sft_run("llara", "crime", 0).path
    reference = {**load_file(out / "adapter" / "adapter_model.safetensors"),
                 **load_file(out / "projector.safetensors")}
    shutil.rmtree(out)
    assert not run(profile, "crime", "llara", stop_after=3)["finished"]  # checkpoint at 2
    assert run(profile, "crime", "llara")["steps_run"] == total - 2
    resumed = {**load_file(out / "adapter" / "adapter_model.safetensors"),
               **load_file(out / "projector.safetensors")}
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=0, rtol=0)


def test_every_seed_gets_its_own_adapter(profile):
    """sft.seeds: LLaRA trains one adapter per seed (different LoRA init and order), the
    ablation systems only the first seed."""
    seeded = dataclasses.replace(profile, sft=dataclasses.replace(profile.sft, seeds=(0, 1)))
    result = run(seeded, "crime", "llara")
    assert result["finished"] and result["seeds"] == "0,1" and "final_loss_seed_1" in result
    a, b = (load_file(seeded.layout.sft_run("llara", "crime", s).adapter_weights)
            for s in (0, 1))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((seeded.layout.sft_run("llara", "crime", 1).manifest).read_text())["seed"] == 1
    assert seeded.sft.seeds_for("cprec_ds_only") == (0,)


def test_missing_inputs_are_clear_errors(profile):
    shutil.rmtree(profile.layout.next_item_model("sasrec", "crime").path)
    with pytest.raises(SFTError, match="no SASRec for domain 'crime'"):
        SFTTrainer(profile, "crime", "llara").setup()
    with pytest.raises(Exception, match="not a domain partition key"):
        SFTTrainer(profile, "../etc", "llara")
    with pytest.raises(Exception, match="not a domain partition key"):  # even with its own run
        SFTTrainer(profile, "../etc", "llara", run=profile.layout.sft_run("llara", "crime", 0))
    lever = profile.layout.lever_run("listing", "llara", "crime", 0)
    assert SFTTrainer(profile, "crime", "llara", run=lever).run == lever


@pytest.fixture
def rank_profile(profile):
    """cprec_rank: two epochs over 8 windows, validation scored every 2 steps."""
    rank = dataclasses.replace(profile.sft.rank, epochs=2, max_samples=8, select_every=2)
    return dataclasses.replace(profile, sft=dataclasses.replace(
        profile.sft, rank=rank, validation_cases=6))


def test_rank_system_redraws_negatives_selects_on_validation_and_reports(rank_profile):
    trainer = SFTTrainer(rank_profile, "crime", "cprec_rank")
    trainer.setup()
    first, second = trainer.epochs
    assert [(s.user, s.history, s.target) for s in first] == [
        (s.user, s.history, s.target) for s in second]  # the same windows,
    assert [s.candidates for s in first] != [s.candidates for s in second]  # new negatives
    assert trainer.inputs.item_table[1:].mean(0).abs().max() < 1e-4  # standardised inputs
    rank = rank_profile.sft.rank  # LoRA, the projector and the temperature: their own rates
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [
        rank.lr, rank.projector_lr, rank.temperature_lr, rank.residual_lr]
    result = run(rank_profile, "crime", "cprec_rank")
    assert result["finished"] and result["steps"] == 8  # 2 epochs x 8 windows / batch 2
    out = rank_profile.layout.sft_run("cprec_rank", "crime", 0)
    rows = [json.loads(x) for x in out.train_log.read_text().splitlines()]
    assert all(r["rank_loss"] >= 0 and r["ntp_loss"] >= 0 for r in rows)
    # the ranking temperature learns (from 1) and the validation loss is read through it
    assert rows[0]["temperature"] == 1.0 and rows[-1]["temperature"] != 1.0
    # no curriculum: the hybrid prompt (and a projector update) on every step
    assert {(r["prompt"], r["p_hybrid"]) for r in rows} == {("hybrid", 1.0)}
    curve = [json.loads(x) for x in out.validation_log.read_text().splitlines()]
    assert [r["step"] for r in curve] == [2, 4, 6, 8] and curve[0]["cases"] == 6
    manifest = json.loads(out.manifest.read_text())
    # kept: the lowest validation loss; saved: that one, or the last step's weights where
    # they are within one standard error of it (the simpler choice)
    best = min(curve, key=lambda r: (r["loss per answer"], -r["step"]))
    choice, _ = one_se_choice({"last": curve[-1]["per_case"]["loss"],
                               "best": best["per_case"]["loss"]}, "last", higher_is_better=False)
    expected = curve[-1] if choice == "last" else best
    saved = manifest["validation"]
    assert {k: v for k, v in saved.items() if k != "selected"} == {
        k: v for k, v in expected.items() if k != "per_case"}
    assert saved["selected"].startswith("the last step" if choice == "last" else "step")
    assert manifest["scoring"] in ("sum", "mean") and "per_case" not in str(manifest)
    assert len(curve[0]["per_case"]["loss"]) == 6 and {"mrr (sum)", "mrr (mean)", "loss se"} <= set(
        curve[0])
    assert manifest["objective"] == "rank" and manifest["epochs"] == 2
    assert float(load_file(out.projector)["residual_weight"][0]) == 0.0  # no gradient outside
    injection = manifest["injection"]
    assert injection["before"]["items"] == injection["after"]["items"] > 0
    assert 0 < injection["after"]["item_specific_share"] <= 1.5
    assert not out.best.exists()  # the kept adapters are gone once the final one is written


def test_killed_rank_run_resumes_to_the_same_selected_weights(rank_profile):
    run(rank_profile, "crime", "cprec_rank")
    out = rank_profile.layout.sft_run("cprec_rank", "crime", 0)
    reference = {**load_file(out.adapter_weights), **load_file(out.projector)}
    curve = out.validation_log.read_text()
    shutil.rmtree(out.path)
    assert not run(rank_profile, "crime", "cprec_rank", stop_after=5)["finished"]  # ckpt at 4
    assert run(rank_profile, "crime", "cprec_rank")["steps_run"] == 4
    assert out.validation_log.read_text() == curve
    resumed = {**load_file(out.adapter_weights), **load_file(out.projector)}
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=0, rtol=0)


def test_paper_recipe_is_scored_on_validation_without_selection(profile):
    run(profile, "crime", "llara")
    manifest = json.loads(profile.layout.sft_run("llara", "crime", 0).manifest.read_text())
    assert manifest["objective"] == "ntp" and manifest["validation"]["step"] == manifest["steps"]
    assert manifest["injection"]["before"]["mean_pairwise_cosine"] > 0


@pytest.fixture
def residual_profile(rank_profile):
    """rank_profile with a GRU4Rec beside the SASRec: the residual system picks one."""
    with duckdb.connect(str(rank_profile.layout.database), read_only=True) as con:
        data = load_domain_data(con, "crime")
    train_next_item(data, GRU4RecConfig(max_epochs=2, max_len=10),
                    rank_profile.layout.next_item_model("gru4rec", "crime"), log=lambda *_: None)
    return rank_profile


def test_residual_ranker_starts_at_its_classic_partner_and_learns_the_gate(residual_profile):
    trainer = SFTTrainer(residual_profile, "crime", "cprec_residual")
    trainer.setup()
    partner, cases = trainer.partner, trainer.inputs.validation
    # the partner: the better of SASRec and GRU4Rec by MRR on the validation cases
    assert set(partner.valid_mrr) == {"sasrec", "gru4rec"}
    assert partner.valid_mrr[partner.name] == max(partner.valid_mrr.values())
    target = np.array([c.candidates.index(c.target) for c in cases])
    classic = partner.scores(cases)
    # its scores of a window come from the whole history before the target, which ends in
    # the prompt's window (test_sft_samples: longer than the window)
    assert all(c.classic_history[-len(c.history):] == c.history for c in trainer.samples)
    # step 0: the gate is 0, so the residual ranking is the classic model's, case by case
    report = validate(trainer, 2)
    assert report["scoring"] == "residual"
    assert report["per_case"]["rr (residual)"] == pytest.approx(
        reciprocal_ranks(classic, target).tolist(), abs=1e-5)
    rank = residual_profile.sft.rank
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [
        rank.lr, rank.projector_lr, rank.temperature_lr, rank.residual_lr]

    result = run(residual_profile, "crime", "cprec_residual")
    assert result["finished"]
    out = residual_profile.layout.sft_run("cprec_residual", "crime", 0)
    rows = [json.loads(x) for x in out.train_log.read_text().splitlines()]
    assert rows[0]["gate"] == 0.0 and rows[-1]["gate"] != 0.0  # learned inside the loss
    manifest = json.loads(out.manifest.read_text())
    assert manifest["objective"] == "residual" and manifest["scoring"] == "residual"
    saved = load_file(out.projector)["residual_weight"]
    record = manifest["residual"]
    assert record["partner"] == partner.name
    assert record["gate"] == pytest.approx(float(saved[0]), abs=1e-6)
    # the learned gate is saved only where validation says it beats the partner alone
    keep, why, _ = keep_gate(partner.reciprocal_ranks(cases),
                             _kept_row(out, manifest)["per_case"]["rr (residual)"])
    assert record["kept"] == why and record["gate"] == (record["learned_gate"] if keep else 0.0)
    assert manifest["validation"]["mrr (residual)"] > 0

    # the evaluation ranks its test cases by the same formula with the recorded partner and
    # gate; the two-stage pipeline re-ranks with it
    profile = dataclasses.replace(
        residual_profile, sft=dataclasses.replace(residual_profile.sft, systems=("cprec_residual",)),
        evaluation=dataclasses.replace(residual_profile.evaluation, max_cases=8, zero_shot=False,
                                       generation=False, fusion=""))
    evaluate_domain(lambda: connect(profile.layout.database), profile, "crime",
                    systems=["cprec_residual"], log=lambda *_: None)
    with connect(profile.layout.database) as con:
        families = {r for r in con.execute("""SELECT DISTINCT system, family FROM evaluation_cases
                                              WHERE system LIKE 'cprec_residual%'""").fetchall()}
        choices = dict(con.execute("""SELECT choice, value FROM evaluation_choices
                                      WHERE system = 'cprec_residual'""").fetchall())
        reranker = choose_reranker(con, profile, "crime", "Crime")
    assert {("cprec_residual", "residual"), ("cprec_residual (shuffled candidate emb)",
                                             "residual")} <= families
    assert choices["scoring"] == "residual" and choices["classic"] == partner.name
    assert float(choices["gate"]) == pytest.approx(manifest["residual"]["gate"], rel=1e-3)
    assert (reranker.system, reranker.fusion_partner) == ("cprec_residual", partner.name)
    assert reranker.fusion_lambda == manifest["residual"]["gate"]
    label = pipeline_label({"retrieval": {"model": "sasrec"}, "retrieve": 5,
                            "rerank": dataclasses.asdict(reranker)})
    assert label.endswith(f"(residual on {partner.name}, gate {reranker.fusion_lambda:g})")


def _kept_row(out, manifest) -> dict:
    """The validation log's row of the step whose weights were saved."""
    step = manifest["validation"]["step"]
    return next(r for r in map(json.loads, out.validation_log.read_text().splitlines())
                if r["step"] == step)


def test_the_learned_gate_is_kept_only_where_it_beats_the_partner_by_one_standard_error():
    rng = np.random.default_rng(0)
    classic = rng.uniform(0.2, 1.0, 200)
    assert not keep_gate(classic, classic + rng.normal(0, 0.05, 200))[0]  # noise: gate 0
    assert not keep_gate(classic, classic - 0.1)[0]  # worse: gate 0
    keep, why, means = keep_gate(classic, np.minimum(classic + rng.uniform(0.05, 0.2, 200), 1))
    assert keep and why.startswith("the learned gate") and means["residual"] > means["classic"]


def test_residual_scores_are_the_evaluations_fusion_with_lambda_the_gate():
    llm, classic = torch.randn(4, 5), torch.randn(4, 5)
    weight = torch.tensor([0.7])
    torch.testing.assert_close(residual_scores(llm, classic, weight).double(),
                               torch.as_tensor(fuse(classic.numpy(), llm.numpy(), 0.7)).double(),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(residual_scores(llm, classic, torch.zeros(1)).argsort(),
                       classic.argsort())  # gate 0: the classic ranking
