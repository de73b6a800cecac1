"""The CPT asset end to end: Dagster Pipes -> accelerate launch -> cprec_core.training.cpt (tiny model)."""

import json
import re

import dagster as dg
import pytest

from cprec_assets import checks
from cprec_assets.assets import data
from cprec_assets.assets import collab, evaluate, recommend
from cprec_assets.assets.train import (accelerate_command, adapter_checks, cpt_assets,
                                       cpt_checks, dpo_assets, sft_assets)
from cprec_assets.launcher import TrainingLauncher
from cprec_assets.resources import ProfileResource
from cprec_assets.tracking import MlflowTracking
from cprec_core import tracking
from cprec_core.config import ConfigError
from cprec_core.evaluation.evaluate import evaluate_domain

STAGE = [data.raw_interactions, data.interactions, data.domain_sequences, data.mixed_sequences,
         data.cpt_corpus]


def test_cpt_adapter_runs_through_pipes_and_reports(tmp_path, fixture_config, tracked):
    cprec = ProfileResource(config_file=str(fixture_config), data_dir=str(tmp_path / "data"))
    resources = {"cprec": cprec, "launcher": TrainingLauncher(), "mlflow": MlflowTracking()}
    command = accelerate_command(cprec, "cprec_core.training.cpt", "--variant", "wsa")
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--cpu" in command
    everything = [*STAGE, data.domain_users, collab.sasrec, collab.gru4rec, *cpt_assets, *sft_assets,
                  *dpo_assets, evaluate.candidate_sets, evaluate.evaluation, evaluate.leaderboard,
                  recommend.full_ranking, recommend.recommendations,
                  evaluate.every_system_saw_the_stored_candidate_sets,
                  evaluate.valid_ratio_above_floor, evaluate.dpo_keeps_the_answer_format,
                  *checks.data_checks, *cpt_checks, *adapter_checks]
    with dg.instance_for_test() as instance:
        result = dg.materialize(everything, selection=[a.key for a in STAGE] + [cpt_assets[0].key],
                                resources=resources, instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("cpt_adapter")[0].metadata
        per_domain = dg.materialize(
            everything, selection=["domain_users", "sasrec", "gru4rec", "candidate_sets",
                                   "sft_adapter", "llara_adapter", "sft_rank_adapter",
                                   "dpo_pairs", "dpo_adapter"],
            partition_key="crime", resources=resources, instance=instance)
        assert per_domain.success
        sft = per_domain.asset_materializations_for_node("sft_adapter")[0].metadata
        llara = per_domain.asset_materializations_for_node("llara_adapter")[0].metadata
        rank = per_domain.asset_materializations_for_node("sft_rank_adapter")[0].metadata
        pairs = per_domain.asset_materializations_for_node("dpo_pairs")[0].metadata
        dpo = per_domain.asset_materializations_for_node("dpo_adapter")[0].metadata
        scored = dg.materialize(everything, selection=["candidate_sets", "evaluation"],
                                partition_key="crime", resources=resources, instance=instance)
        assert scored.success
        scored_meta = scored.asset_materializations_for_node("evaluation")[0].metadata
        # the in-process assets' progress lines reach the Dagster run log
        trained_log = [e.user_message for e in instance.all_logs(per_domain.run_id)]
        scored_log = [e.user_message for e in instance.all_logs(scored.run_id)]
        results = scored_meta["results"].value
        # what each LLM system run cost, from the same evaluation
        assert "| llara | 1 |" in scored_meta["scoring_cost"].value
        assert scored_meta["llm_scoring_seconds"].value > 0
        # re-scoring the classic systems alone keeps the LLM systems' rows as they were
        count = "SELECT system, count(*) FROM evaluation_cases GROUP BY ALL ORDER BY ALL"
        with cprec.connect() as con:
            before = con.execute(count).fetchall()
        evaluate_domain(cprec.connect, cprec.profile, "crime", systems=())
        with cprec.connect() as con:
            assert con.execute(count).fetchall() == before
            assert {"llara", "gru4rec"} <= {r[0] for r in before}
        # re-scoring one LLM system through the asset's config replaces its rows alone
        costs = "SELECT system, split, seed, evaluated_at FROM evaluation_costs ORDER BY ALL"
        with cprec.connect() as con:
            costs_before = con.execute(costs).fetchall()
        rescored = dg.materialize(
            everything, selection=["evaluation"], partition_key="crime", resources=resources,
            instance=instance, run_config={"ops": {"evaluation": {"config": {
                "systems": ["cprec_dpo"]}}}})
        assert rescored.success
        with cprec.connect() as con:
            assert con.execute(count).fetchall() == before
            costs_after = con.execute(costs).fetchall()
        kept = [r for r in costs_before if not r[0].startswith("cprec_dpo")]
        assert [r for r in costs_after if not r[0].startswith("cprec_dpo")] == kept
        new_dpo = [r for r in costs_after if r[0].startswith("cprec_dpo")]
        assert new_dpo and min(r[3] for r in new_dpo) > max(r[3] for r in costs_before)
        with pytest.raises(ConfigError, match=r"\['gpt'\]: not LLM systems of profile"):
            evaluate_domain(cprec.connect, cprec.profile, "crime", systems=["gpt"])
        # the product stage: full ranking and every user's top k, re-ranked by an LLM
        shipped = dg.materialize(everything, selection=["full_ranking", "recommendations"],
                                 partition_key="crime", resources=resources, instance=instance)
        assert shipped.success
        shipped_meta = shipped.asset_materializations_for_node("recommendations")[0].metadata
        ranked_meta = shipped.asset_materializations_for_node("full_ranking")[0].metadata
        board = dg.materialize(everything, selection=["leaderboard"], resources=resources,
                               instance=instance)
        assert board.success
        board_meta = board.asset_materializations_for_node("leaderboard")[0].metadata
    # every training, evaluation and the leaderboard logged an MLflow run (local store)
    client = tracking.client(tracking.target(cprec.profile))
    experiment = client.get_experiment_by_name("cprec-fixture")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id],
                                                           order_by=["start_time ASC"])}
    assert {"cpt wsa", "sasrec crime seed 0", "gru4rec crime seed 0", "sft cprec crime seed 0",
            "sft llara crime seed 0", "sft cprec_rank crime seed 0", "dpo cprec_dpo crime seed 0",
            "evaluation crime", "leaderboard"} <= set(runs)
    sft_run = runs["sft cprec crime seed 0"]
    assert sft_run.info.status == "FINISHED"
    assert sft_run.data.tags["dagster.run_id"] == per_domain.run_id  # from the child process
    assert sft_run.data.tags["dagster.asset_key"] == "sft_adapter"
    assert sft_run.data.tags["dagster.partition_key"] == "crime"
    assert sft_run.data.params["sft.negatives"] == "2" and "data_version" in sft_run.data.params
    manifest = cprec.profile.layout.sft_run("cprec", "crime", 0).read_manifest()
    assert len(client.get_metric_history(sft_run.info.run_id, "loss")) == manifest.steps
    assert sft["mlflow_run"].value.endswith(f"/#/runs/{sft_run.info.run_id}")
    assert runs["sasrec crime seed 0"].data.tags["dagster.asset_key"] == "sasrec"
    assert meta["mlflow_run_id"].value == runs["cpt wsa"].info.run_id
    assert dpo["mlflow_run_id"].value == runs["dpo cprec_dpo crime seed 0"].info.run_id
    evaluated = runs["evaluation crime"].data.metrics
    assert 0 <= evaluated["llara/hr_at_1_low"] <= evaluated["llara/hr_at_1"] <= evaluated[
        "llara/hr_at_1_high"] <= 1 and "llara/valid_ratio" in evaluated
    assert "sasrec/ndcg_at_5" in evaluated
    assert "Crime/cprec/hr_at_1" in runs["leaderboard"].data.metrics
    assert {"leaderboard.md", "leaderboard.png"} <= {
        a.path for a in client.list_artifacts(runs["leaderboard"].info.run_id)}
    # adapters that passed adapter_is_finite are registered; recommendations name theirs
    version = client.get_model_version("fixture.cprec_rank.crime", "1")
    assert version.run_id == runs["sft cprec_rank crime seed 0"].info.run_id
    assert version.tags["data_version"] == manifest.data_version
    assert client.get_model_version("fixture.cpt.wsa", "1").run_id == runs["cpt wsa"].info.run_id
    assert shipped_meta["model_versions"].value == "fixture.cprec_rank.crime v1"
    assert shipped_meta["reranker_mlflow_run_id"].value == version.run_id
    # every user of the domain has a top k; the LLM the evaluation's fusion names re-ranked
    assert shipped_meta["reranked_users"].value == shipped_meta["users"].value > 0
    assert shipped_meta["reranker"].value.startswith("cprec_rank seed ")
    assert "| recommended (best first) |" in shipped_meta["sample"].value
    with cprec.connect() as con:
        stages = con.execute("SELECT DISTINCT stage, rerank_system FROM recommendations"
                             ).fetchall()
    assert stages == [("rerank", "cprec_rank")]
    assert "two-stage: " in ranked_meta["full_ranking"].value
    assert "### Full ranking" in board_meta["leaderboard"].value  # after the 20-candidate tables
    # the service's slow path re-ranks with the served snapshot's model
    from cprec_core.recommend.rerank import load_reranker
    rerank = load_reranker(cprec.profile)
    with cprec.connect() as con:
        items = [i for (i,) in con.execute("SELECT item_idx FROM items WHERE domain = 'Crime'"
                                           " ORDER BY item_idx").fetchall()]
    scores = rerank("crime", items[:2], items[2:6])
    assert len(scores) == 4 and all(isinstance(x, float) for x in scores)
    for name in ("SASRec", "GRU4Rec"):
        assert any(re.match(rf"{name} Crime: epoch 1/\d+ in .+, valid NDCG@10 [\d.]+ HR@10"
                            r" [\d.]+, new best, patience \d+/\d+ left", m)
                   for m in trained_log), name
    assert any(m.startswith("crime candidate sets (test): ") for m in scored_log)
    assert any(re.match(r"crime test: llara seed 0: \d+/\d+ cases in .+ each$", m)
               for m in scored_log)
    assert any(m.startswith("crime test, ") and "classic systems scored in" in m
               for m in scored_log)
    # the classic systems rank the same candidate sets: GRU4Rec beside SASRec
    for system in ("popularity", "item-knn (all domains)", "sasrec", "gru4rec"):
        assert f"| {system} | ranking |" in results, system
    assert per_domain.asset_materializations_for_node("gru4rec")[0].metadata["epochs"].value >= 1
    # every LLM system is ranked by likelihood and answers by generation, same candidate
    # sets; cprec_rank's prompt has no candidate list (the demo's sft.rank.listing), so it
    # has no answers to generate
    for system in ("cprec", "llara", "base", "cprec_zero_shot", "cprec_rank", "cprec_dpo"):
        for family in ("likelihood (mean)", "likelihood (sum)", "generation"):
            expected = not (system in ("cprec_rank", "cprec_dpo") and family == "generation")
            assert (f"| {system} | {family} |" in results) == expected, (system, family)
    # the ablation (likelihood only), and the fused system with what validation chose for it
    # DPO: the pairs with the scores that chose them, then the adapter from cprec_rank's
    assert pairs["summary"].value["pairs"] > 0 and "| window | chosen |" in pairs["sample"].value
    assert dpo["sft_adapter"].value.endswith("sft/cprec_rank/crime/seed-0/adapter")
    assert "| step | lr | loss | margin | accuracy | pairs |" in dpo["train_log"].value
    # (systems reading candidate vectors: the history's and the candidates' shuffled apart)
    for system, suffixes in (("llara", ["shuffled emb"]), ("cprec", ["shuffled emb"]),
                             ("cprec_rank", ["shuffled history emb", "shuffled candidate emb"]),
                             ("cprec_dpo", ["shuffled history emb", "shuffled candidate emb"])):
        for suffix in suffixes:
            assert f"| {system} ({suffix}) | likelihood (sum) |" in results, (system, suffix)
            assert f"| {system} ({suffix}) | generation |" not in results
    assert "| fused | ranking |" in results
    chosen = scored_meta["chosen_on_validation"].value
    assert "| fused | 0 | lambda |" in chosen and "| cprec_rank | 0 | scoring |" in chosen
    # the candidate-aware adapter's diagnostics and validation curve in the UI
    assert "| before |" in rank["injected_vectors"].value and "| after |" in rank[
        "injected_vectors"].value
    assert "| step | cases | hr@1 (sum) | hr@1 (mean) | mrr (sum) |" in rank["validation"].value
    assert rank["scoring"].value in ("sum", "mean")
    checks_run = {e.check_name: e for e in scored.get_asset_check_evaluations()}
    assert checks_run["every_system_saw_the_stored_candidate_sets"].passed
    assert "valid_ratio_above_floor" in checks_run  # a warning (random weights rarely answer)
    assert "### Crime (test cases:" in board_meta["leaderboard"].value
    assert "| Crime | cprec vs llara | ranking |" in board_meta["leaderboard"].value
    assert "| Crime | cprec_rank vs cprec | ranking |" in board_meta["leaderboard"].value
    assert re.search(r"\| Crime \| fused vs (sasrec|gru4rec) \| ranking \|",
                     board_meta["leaderboard"].value)
    for suffix in ("shuffled history emb", "shuffled candidate emb"):
        assert f"| Crime | cprec_rank vs cprec_rank ({suffix}) | ranking |" in board_meta[
            "leaderboard"].value
    assert board_meta["chart"].value.startswith("![leaderboard](data:image/png;base64,")
    # `make results` renders the same leaderboard into a markdown file with its provenance
    from cprec_core.evaluation.results import main as write_results
    out = tmp_path / "RESULTS.md"
    assert write_results(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data"),
                          "--out", str(out)]) == 0
    text = out.read_text()
    assert "- **Command:** `python -m cprec_core.evaluation.results --config" in text
    assert "### Crime (test cases:" in text and "| llara | 0 |" in text
    # the DPO run beside the SFT run it started from, and the full-ranking table
    assert re.search(r"\| Crime \| cprec_dpo \| 0 \| cprec_rank \| \d+ \|", text)
    assert "### Full ranking (each test item against every item of its domain)" in text
    assert re.search(r"## Compute\n\nRecorded: CPT \d+ min, SFT \d+ min, LLM scoring Crime \d+ min;",
                     text)
    assert re.search(r"\| Crime \| llara \| 1 \| \d+ \| [\d.]+ \|", text)
    # the chip that trained and scored is named, not only the machine that wrote the file
    from cprec_core.provenance import processor
    assert f"**Trained on** (from the CPT and SFT manifests): {processor()};" in text
    assert f"| cpu ({processor()}) x" in text
    assert re.search(r"test cases per domain: Crime \d+ of \d+ \((all|fewer than all)", text)
    assert re.search(r"Evaluated at git revisions:\*\* Crime (?!not recorded)\S+", text)
    assert (tmp_path / "results_fixture.png").is_file()
    # ... and logs it as a study run: the RESULTS file and its chart as artifacts
    results_run = client.search_runs([experiment.experiment_id],
                                     filter_string="tags.`cprec.kind` = 'results'")[0]
    assert {"RESULTS.md", "results_fixture.png"} <= {
        a.path for a in client.list_artifacts(results_run.info.run_id)}
    assert results_run.data.metrics["Crime/llara/hr_at_1"] == evaluated["llara/hr_at_1"]
    # `make demo`'s summary: the same tables from the same functions, and the demo's own
    from cprec_core.evaluation.results import cpt_table, sft_table, summary, trained_manifests
    with cprec.connect() as con:
        printed = summary(con, cprec.profile, ["crime"])
    cpt_runs, sft_runs = trained_manifests(cprec.profile)
    assert cpt_table(cpt_runs) in text and cpt_table(cpt_runs) in printed
    assert sft_table(sft_runs) in text and sft_table(sft_runs) in printed
    assert re.search(r"\| Crime \| cprec_dpo \| 0 \| cprec_rank \| \d+ \|", printed)
    assert "| Crime | gru4rec | 0 |" in printed and "Recommendations Crime: top 3" in printed
    # the same without Dagster: classic systems re-scored alone, then the leaderboard rebuilt
    from cprec_core.evaluation.evaluate import main as evaluate_cli
    from cprec_core.evaluation.leaderboard import main as leaderboard_cli
    args = ["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]
    assert evaluate_cli([*args, "--domain", "crime", "--classic-only"]) == 0
    with pytest.raises(SystemExit) as refused:  # an unknown system: a usage error, nothing run
        evaluate_cli([*args, "--domain", "crime", "--system", "gpt"])
    assert refused.value.code == 2
    assert leaderboard_cli(args) == 0
    # reported by the child process through Pipes
    assert meta["finished"].value is True and meta["base_model"].value == "tiny-random"
    assert meta["tokens"].value > 0 and meta["tokens_per_second"].value > 0
    # added by the asset from the files the child wrote
    assert meta["curves"].value.startswith("![training curves](data:image/png;base64,")
    assert "| anneal |" in meta["phases"].value
    evaluations = result.get_asset_check_evaluations()
    assert [e.check_name for e in evaluations if e.asset_key == cpt_assets[0].key] == ["adapter_is_finite"]
    assert all(e.passed for e in evaluations)
    out = cprec.profile.layout.cpt_adapter("wsa").path
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"warmup", "stable", "anneal"}
    # SFT through Pipes: CPRec starts from the CPT adapter, LLaRA from scratch
    assert sft["finished"].value is True and sft["init_adapter"].value.endswith("cpt/wsa/adapter")
    assert "init_adapter" not in llara and llara["finished"].value is True
    assert "| step | prompt | p_hybrid |" in sft["train_log"].value
