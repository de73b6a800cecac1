"""The scoring workload behind benchmarks/bench_scoring_bound.py: tokens per case as the
scorer feeds them, FLOPs per token from the model's layers, and the planned system runs."""

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cprec_core.config import CorpusConfig, load_profile
from cprec_core.evaluation.candidates import build_candidate_sets
from cprec_core.evaluation.evaluate import create_tables, llm_systems, planned_llm_systems
from cprec_core.models.hybrid import add_placeholder_to_tokenizer
from cprec_core.models.loader import TINY
from cprec_core.models.tokenizer import train_tiny_tokenizer
from tests.core.evaluation.test_llm_scoring import TITLES, scorer, two_cases
from workload import DomainWorkload, case_tokens, domain_workload, model_flops


@pytest.mark.parametrize("hybrid", [True, False])
def test_case_tokens_are_what_the_scorer_feeds(hybrid):
    s, sample = scorer()
    if not hybrid:  # the zero-shot systems' text prompt
        s = dataclasses.replace(s, projector=None, item_table=None)
    for case in two_cases(sample):
        prompt, titles_in = case_tokens(s.tokenizer, case, TITLES, hybrid, CorpusConfig())
        assert prompt == s.prompt(case, TITLES)[0].shape[1]
        # every title and its EOS, less the EOS, which is only a target
        assert titles_in == sum(len(c) - 1 for c in s.continuations(case, TITLES))


def test_model_flops_count_every_linear_layer_and_the_head():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, **TINY))
    h, f, layers = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"]
    kv = TINY["num_key_value_heads"] * h // TINY["num_attention_heads"]
    per_layer = h * h * 2 + h * kv * 2 + h * f * 3  # q, o; k, v; gate, up, down
    assert model_flops(model) == (2 * layers * per_layer, 2 * h * 300)


def test_workload_flops_per_prompt_kind():
    w = DomainWorkload("X", cases=2, hybrid_runs=3, text_runs=1, hybrid_prompt_tokens=10.0,
                       text_prompt_tokens=6.0, continuation_tokens=4.0)
    # per case and run: (prompt + titles) tokens through the layers, titles + 1 head rows
    assert w.runs == 4
    assert w.flops(100, 7) == 2 * (3 * (14 * 100 + 5 * 7) + 1 * (10 * 100 + 5 * 7))


def test_planned_systems_of_the_study_and_the_ones_that_exist(tmp_path):
    study = load_profile("study")
    planned = planned_llm_systems(study)
    # zero-shot first; LLaRA and CPRec over three seeds; ablations and control with one
    assert planned[:2] == [("base", 0), ("cprec_zero_shot", 0)] and len(planned) == 11
    assert planned.count(("llara", 2)) == 1 and ("cprec_ds_only", 1) not in planned
    logged = []
    empty = dataclasses.replace(study, data_dir=str(tmp_path))
    assert llm_systems(empty, "crime", logged.append) == [("base", 0)]
    assert len(logged) == 10 and "no WSA CPT adapter" in logged[0]


def test_domain_workload_covers_every_test_case_and_planned_run(con):
    con, profile = con
    build_candidate_sets(con, "crime", negatives=2)
    titles = [t for (t,) in con.execute("SELECT title FROM items").fetchall()]
    tok = train_tiny_tokenizer(titles * 2)
    add_placeholder_to_tokenizer(tok)
    w = domain_workload(con, profile, "crime", tok)
    tests = con.execute("SELECT count(*) FROM candidate_sets WHERE domain = 'Crime'"
                        " AND split = 'test'").fetchone()[0]
    assert w.domain == "Crime" and w.cases == tests > 0
    assert w.runs == len(planned_llm_systems(profile)) and w.text_runs == 2
    # a hybrid prompt has one [emb] token per history item and candidate on top of the text
    assert w.hybrid_prompt_tokens > 0 and w.text_prompt_tokens > 0
    assert w.continuation_tokens >= 3  # three candidates of at least one token each


def test_the_bound_benchmark_runs_on_a_config_file(con, fixture_config, capsys):
    """benchmarks/bench_scoring_bound.py end to end on the fixture (tiny model, 2 cases per
    domain): one row per target domain and the total, every figure from this run."""
    import importlib.util
    from pathlib import Path

    from cprec_core.data.domain_users import build_domain_users

    con, profile = con
    build_domain_users(con, "horror")
    for slug in ("crime", "horror"):
        build_candidate_sets(con, slug, negatives=2)
    create_tables(con)  # a recorded evaluation of Crime: two runs, 3 minutes of scoring
    con.executemany("INSERT INTO evaluation_costs (domain, split, system, seed, cases,"
                    " load_seconds, score_seconds, device) VALUES ('Crime', ?, ?, 0, 40, 1, ?, ?)",
                    [("test", "base", 60.0, "cpu (Chip A)"), ("test", "llara", 120.0, "cpu (Chip A)"),
                     ("valid", "llara", 999.0, "cpu (Chip A)")])
    con.commit()
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scoring_bound.py"
    spec = importlib.util.spec_from_file_location("bench_scoring_bound", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    con.close()  # the benchmark opens the database read-only
    bench.main(["--config", str(fixture_config), "--data-dir", profile.data_dir, "--cases", "2"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| domain")}
    assert set(rows) == {"Crime", "Horror", "all"}
    assert int(rows["Crime"][1]) == len(planned_llm_systems(profile))  # system runs
    assert float(rows["Crime"][6]) > 0  # the measured forward, s/case
    assert [c.strip() for c in rows["Crime"][8:]] == ["3.0 (2 runs)", "cpu (Chip A)"]
    assert [c.strip() for c in rows["Horror"][8:]] == ["-", "-"]
    assert "GFLOP/s" in out and "profile fixture" in out
