"""One place for report tables: the summary `make demo` prints and the file `make results`
writes hold the same CPT, SFT, DPO and leaderboard tables, made by the same functions."""

import dataclasses
import json

import duckdb

from cprec_core.config import load_config_file
from cprec_core.evaluation import results
from cprec_core.evaluation.evaluate import create_tables
from cprec_core.evaluation.leaderboard import SCHEMA as LEADERBOARD_SCHEMA

VALIDATION = {"step": 4, "hr@1 (sum)": 0.5, "hr@1 (mean)": 0.25, "loss per answer": 2.0,
              "cases": 6}
INJECTION = {when: {"item_specific_share": share, "mean_pairwise_cosine": 0.1}
             for when, share in (("before", 0.2), ("after", 0.4))}


def _write(run, manifest: dict, log: list[dict] = ()) -> None:
    run.path.mkdir(parents=True)
    run.manifest.write_text(json.dumps(manifest))
    run.train_log.write_text("".join(json.dumps(row) + "\n" for row in log))


def _trained(profile) -> None:
    """A finished CPT run, SFT run and DPO run, as their manifests describe them."""
    layout = profile.layout
    _write(layout.cpt_adapter("wsa"), {
        "variant": "wsa", "base_model": "tiny-random", "tokens": 1000, "steps": 3,
        "phase_steps": {"warmup": 1, "stable": 1, "anneal": 1}, "final_loss": 2.5,
        "tokens_per_second": 10.0, "dtype": "fp32", "train_seconds": 36})
    sft = {"domain": "Crime", "system": "cprec_rank", "seed": 0, "objective": "rank",
           "samples": 8, "epochs": 1, "steps": 4, "hybrid_steps": 2, "final_loss": 1.2,
           "tokens_per_second": 5.0, "train_seconds": 60, "validation": VALIDATION,
           "injection": INJECTION, "scoring": "sum"}
    _write(layout.sft_run("cprec_rank", "crime", 0), sft)
    _write(layout.sft_run("cprec_dpo", "crime", 0), {
        **sft, "system": "cprec_dpo", "objective": "dpo", "sft_system": "cprec_rank",
        "partition": "crime", "pair_summary": {"pairs": 12, "sft_hr@1 on windows": 0.3}},
        [{"loss": 0.693, "margin": 0.0, "accuracy": 0.5},
         {"loss": 0.6, "margin": 0.2, "accuracy": 0.75}])


def test_demo_summary_and_results_file_render_the_same_tables(tmp_path, fixture_config,
                                                              monkeypatch):
    profile = dataclasses.replace(load_config_file(fixture_config),
                                  data_dir=str(tmp_path / "data"))
    _trained(profile)
    # the corpus and leaderboard tables have their own tests; here, where they go
    monkeypatch.setattr(results, "corpus_summary", lambda con: "CORPUS")
    monkeypatch.setattr(results, "leaderboard_markdown", lambda con: "LEADERBOARD")
    monkeypatch.setattr(results, "full_ranking_markdown", lambda con, resamples: "FULL")
    con = duckdb.connect()
    create_tables(con)
    con.execute(LEADERBOARD_SCHEMA)
    con.execute("CREATE TABLE candidate_sets (domain VARCHAR, split VARCHAR, user_idx INTEGER,"
                " target INTEGER, candidates INTEGER[], activity VARCHAR)")
    written = results.render(con, profile, "python -m cprec_core.evaluation.results", None)
    printed = results.summary(con, profile, ["crime"])
    cpt, sft = results.trained_manifests(profile)
    shared = [results.cpt_table(cpt), results.sft_table(sft), *results.validation_section(sft),
              *results.dpo_section(profile), *results.leaderboard_section(con, profile)]
    for part in filter(None, shared):
        assert part in written and part in printed, part
    for text in (written, printed):
        assert "| wsa | tiny-random | 1,000 | 3 | 1/1/1 | 2.5 | 10 | fp32 | 0.01 |" in text
        assert "| Crime | cprec_rank | 0 | rank | 8 | 1 | 4 | 2 | 1.2 | 5 | CPT wsa | 1 |" in text
        assert "| Crime | cprec_dpo | 0 | cprec_rank | 12 | 0.3 | 4 | 0.693 | 1.2 |" in text
        assert "LEADERBOARD" in text and "FULL" in text
    assert printed.startswith("Profile fixture (tiny-random): CPT the whole corpus")
    assert "\n\nCORPUS\n" in printed and "Next-item models per target domain" in printed


def test_residual_runs_show_their_partner_and_the_gate_learned_and_kept():
    from cprec_core.layout import RunManifest

    assert results.residual_section([RunManifest(kind="sft", system="cprec_rank")]) == []
    run = RunManifest(kind="sft", system="cprec_residual", domain="Crime", seed=0, residual={
        "partner": "sasrec", "partner_seed": 0,
        "partner_valid_mrr": {"sasrec": 0.57, "gru4rec": 0.546}, "learned_gate": 0.2,
        "gate": 0.0, "kept": "gate 0", "valid_mrr": {"residual": 0.549, "classic": 0.57}})
    text = "\n".join(results.residual_section([run]))
    assert ("| Crime | cprec_residual | 0 | sasrec | sasrec 0.570, gru4rec 0.546 | 0.2 | 0 |"
            " 0.549 / 0.570 |") in text
