"""The public benchmark's report (cprec_core.evaluation.benchmark) on a database written in
the full ranking's own tables: metrics from the stored ranks, goals read off them."""

import dataclasses

import duckdb
import numpy as np
import pytest

from cprec_core.config import load_profile
from cprec_core.evaluation import benchmark
from cprec_core.recommend.full_ranking import SCHEMA

USERS = 200


def _ranks(hits: int, rng) -> np.ndarray:
    """0-based ranks of ``USERS`` users, ``hits`` of them inside the top 10."""
    ranks = np.concatenate([rng.integers(0, 10, hits), rng.integers(10, 3000, USERS - hits)])
    return rng.permutation(ranks)


@pytest.fixture()
def bench(tmp_path):
    profile = dataclasses.replace(load_profile("ml1m-bench"), data_dir=str(tmp_path))
    con = duckdb.connect()
    con.execute(SCHEMA)
    con.execute("CREATE TABLE domains (domain VARCHAR, slug VARCHAR, role VARCHAR, users INT,"
                " items INT, interactions INT)")
    con.execute("INSERT INTO domains VALUES ('ML-1M', 'ml-1m', 'target', 6040, 3706, 1000209)")
    rng = np.random.default_rng(0)
    rows = []
    # SASRec: 57-58 of 200 users in the top 10 per seed (HR@10 about 0.2875); the CPT text
    # system 80 (0.40), far above it; the base text system as SASRec
    for system, hits in (("sasrec", (57, 58, 58)), ("sasrec_text_cpt_target", (80, 80, 80)),
                         ("sasrec_text_base", (57, 57, 57)), ("popularity", (20,))):
        for seed, h in enumerate(hits):
            rows += [("ML-1M", system, u, int(r), seed) for u, r in enumerate(_ranks(h, rng))]
    con.executemany("INSERT INTO full_ranking_cases (domain, system, user_idx, rank, seed)"
                    " VALUES (?, ?, ?, ?, ?)", rows)
    return profile, con


def test_the_report_reads_the_ranks_and_the_goals_off_them(bench):
    profile, con = bench
    text = benchmark.render(profile, con, "ML-1M", "ml-1m", "test", 200, 3600.0, ())
    sasrec = benchmark.load_scored(con, "ML-1M")["sasrec"]
    assert sasrec.ranks.shape == (3, USERS)
    hr = float(sasrec.per_user["hr@10"].mean())
    assert hr == pytest.approx((57 + 58 + 58) / 3 / USERS)
    assert "| SASRec (quoted) |" in text and "0.2853" in text  # published rows, marked
    assert f"HR@10 {hr:.4f}" in text
    assert ("`sasrec` (selected on validation, trained on the train split) reproduces the"
            " published SASRec row (|HR@10 - 0.2853| <= 0.01): **met**") in text
    assert "sasrec (refit)" not in text  # an arm not run has no row
    assert "`sasrec_text_cpt_target` above our SASRec (paired p < 0.05): **met**" in text
    assert "at or above HSTU (0.3097 / 0.172): **met**" in text
    assert "(60 min wall)" in text and "within about two hours here: **met**" in text
    assert "| sasrec_text_cpt_target vs sasrec | 200 |" in text
    assert "| popularity | 1 | 200 |" in text


def test_the_refit_profile_joins_as_its_own_row(bench):
    profile, con = bench
    refit = duckdb.connect()
    refit.execute(SCHEMA)
    rng = np.random.default_rng(1)
    refit.executemany("INSERT INTO full_ranking_cases (domain, system, user_idx, rank, seed)"
                      " VALUES (?, ?, ?, ?, ?)",
                      [("ML-1M", "sasrec", u, int(r), 0) for u, r in enumerate(_ranks(70, rng))])
    arm = dataclasses.replace(profile, name="ml1m-bench-refit")
    text = benchmark.render(profile, con, "ML-1M", "ml-1m", "test", 200, None, (),
                            [(arm, refit)])
    assert "- `sasrec (refit)` (refit on train + validation" in text
    assert "HR@10 0.3500, +0.0647" in text  # 70 of 200 users, and its distance to 0.2853
    # the arm (seed 0) is paired with SASRec's seed 0, not its three-seed mean
    assert "| sasrec (refit) vs sasrec (seed 0) | 200 |" in text
    assert "| sasrec (refit) | 1 | 200 |" in text
    assert "- `sasrec (refit)` against `sasrec` of the same seed (one protocol difference" in text


def test_a_miss_says_by_how_much(bench):
    profile, con = bench
    con.execute("UPDATE full_ranking_cases SET rank = rank + 10 WHERE system = 'sasrec'"
                " AND user_idx % 2 = 0")  # about half of SASRec's hits gone
    text = benchmark.render(profile, con, "ML-1M", "ml-1m", "test", 200, None, ())
    hr = float(benchmark.load_scored(con, "ML-1M")["sasrec"].per_user["hr@10"].mean())
    assert hr < 0.2853 - 0.01
    assert f"<= 0.01): **not met** (HR@10 {hr:.4f}, {hr - 0.2853:+.4f}" in text
    assert "within about two hours here: not measured" in text
