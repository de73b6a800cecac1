"""The CPT scaling curve: budgets that become the steps they should, branches that leave the
stable run as it was, a killed run that resumes to the same points, and the curve itself."""

import dataclasses
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from cprec_core.config import ScalingConfig, load_profile, ConfigError
from cprec_core.data.domain_users import build_domain_users
from cprec_core.evaluation.candidates import build_candidate_sets
from cprec_core.training.cpt_plan import Corpus
from cprec_core.training import cpt_scaling


def synthetic(n_domain: int, n_mixed: int, length: int) -> Corpus:
    ids = [np.arange(length, dtype=np.int64) + 5 for _ in range(n_domain + n_mixed)]
    kinds = ["domain"] * n_domain + ["mixed"] * n_mixed
    return Corpus(kinds, [["A"]] * len(kinds), [[1, 2]] * len(kinds), ids, "synthetic")


def test_each_budget_becomes_its_stable_and_annealing_steps():
    profile = load_profile("demo", {"cpt": {"block_size": 100, "blocks_per_step": 2,
                                            "micro_batch": 1, "max_tokens": 0},
                                    "scaling": {"tokens": 4000, "anneal_share": 0.25,
                                                "fractions": [0.25, 0.5, 1.0]}})
    # 40 + 40 documents of 100 tokens: one block each, 200 tokens per step
    plan, points = cpt_scaling.scaling_plan(synthetic(40, 40, 100), profile, pad_id=0)
    assert [p["label"] for p in points] == ["1of4", "1of2", "all"]
    # budget 1000: 750 stable tokens -> 4 steps (800), 250 annealing -> 2 steps (400)
    assert [(p["stable_steps"], p["anneal_steps"]) for p in points] == [(4, 2), (8, 3), (15, 5)]
    assert [p["tokens"] for p in points] == [1200, 2200, 4000]
    assert plan.warmup_steps + plan.stable_steps == 15 and plan.anneal_steps == 5
    assert plan.data == ["domain"] * 15 + ["mixed"] * 5
    assert plan.warmup_steps == 1  # 5 % of the largest point's 20 steps
    with pytest.raises(ValueError, match="lower scaling.tokens"):
        cpt_scaling.scaling_plan(synthetic(10, 10, 100), profile, pad_id=0)
    with pytest.raises(ConfigError, match="scaling.fractions"):
        ScalingConfig(fractions=(0.5, 0.5))


@pytest.fixture
def scaling_profile(con):
    con, profile = con
    build_domain_users(con, "horror")
    for slug in ("crime", "horror"):
        build_candidate_sets(con, slug, negatives=profile.sft.negatives, log=lambda _: None)
    con.close()
    return dataclasses.replace(
        profile, scaling=ScalingConfig(fractions=(0.25, 0.5, 1.0), tokens=0, anneal_share=0.25),
        sasrec=dataclasses.replace(profile.sasrec, max_epochs=2))


def test_one_run_gives_every_point_and_resumes_to_the_same_adapters(scaling_profile, tmp_path):
    profile = scaling_profile
    root = profile.layout.scaling_dir
    assert cpt_scaling.run(profile, stop_after=2)["finished"] is False  # killed early
    assert not (root / "points" / "all").exists()
    result = cpt_scaling.run(profile)
    assert result["finished"] and result["points"] == 3
    resumed = {p: load_file(root / "points" / p / "adapter" / "adapter_model.safetensors")
               for p in ("1of4", "1of2", "all")}
    curve = json.loads(profile.layout.scaling_curve.read_text())
    labels = [r["label"] for r in curve["points"]]
    assert labels == ["base", "base", "1of4", "1of4", "1of2", "1of2", "all", "all"]
    tokens = [r["tokens"] for r in curve["points"]][::2]
    assert tokens[0] == 0 and tokens == sorted(tokens) and len(set(tokens)) == 4
    assert all(0 <= r["hr@1"] <= 1 and 0 <= r["ndcg@10"] <= 1 for r in curve["points"])
    assert profile.layout.scaling_plot.is_file()
    # the study report's section: every point with its interval and its test against base
    from cprec_core.evaluation.text_study import scaling_section
    section = "\n".join(scaling_section(profile, 20, tmp_path / "curve.png"))
    table = [line for line in section.splitlines() if line.startswith(("| base", "| 1of", "| all"))]
    assert len(table) == 8 and all(" p " in line for line in table[2:])
    assert "![scaling curve](curve.png)" in section and (tmp_path / "curve.png").is_file()
    # an uninterrupted run of the same plan gives the same adapters
    fresh = dataclasses.replace(profile, data_dir=str(tmp_path / "again"))
    import shutil
    shutil.copytree(profile.layout.root, fresh.layout.root,
                    ignore=shutil.ignore_patterns("scaling"))
    cpt_scaling.train_points(fresh, cpt_scaling.Reporter(enabled=False))
    for p, weights in resumed.items():
        again = load_file(fresh.layout.scaling_dir / "points" / p / "adapter"
                          / "adapter_model.safetensors")
        for key in weights:
            assert (weights[key] - again[key]).abs().max() < 1e-6, (p, key)
