import dataclasses

import duckdb
import numpy as np
import pytest

from cprec_core.build_corpus import main as build_corpus
from cprec_core.config import load_config_file
from cprec_core.domain_data import build_domain_users
from cprec_core.evaluation.baselines import item_knn, load_cases, popularity
from cprec_core.evaluation.candidates import bad_candidate_sets, build_candidate_sets
from cprec_core.evaluation.evaluate import evaluate_domain
from cprec_core.evaluation.metrics import hit_ratio, ndcg, ranking_report, ranks_from_scores
from cprec_core.interactions import build_interactions
from tests.conftest import data_config, load_rows


def test_metrics_formulas():
    ranks = np.array([0, 1, 4, 10])
    assert hit_ratio(ranks, 1) == 0.25 and hit_ratio(ranks, 5) == 0.75
    assert ndcg(ranks, 5) == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(6)) / 4)
    # ties count against the target: a constant scorer ranks it last, not first
    assert ranks_from_scores(np.zeros((2, 20)), np.array([0, 5])).tolist() == [19, 19]
    assert ranking_report(np.array([0]))["hr@1"] == 1.0


@pytest.fixture
def con(tmp_path, fixture_config):
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]) == 0
    profile = dataclasses.replace(load_config_file(fixture_config), data_dir=str(tmp_path / "data"))
    con = duckdb.connect(str(profile.database))
    build_domain_users(con, "crime")
    yield con, profile
    con.close()


def test_candidate_sets_are_fixed_valid_and_exclude_seen_items(con):
    con, _ = con
    counts = build_candidate_sets(con, "crime", negatives=2)
    first = con.execute("SELECT * FROM candidate_sets ORDER BY split, user_idx").fetchall()
    assert counts["test"] > 0 and bad_candidate_sets(con, 3) == 0
    build_candidate_sets(con, "crime", negatives=2)
    assert con.execute("SELECT * FROM candidate_sets ORDER BY split, user_idx").fetchall() == first
    seen = con.execute(
        """SELECT count(*) FROM candidate_sets c, unnest(c.candidates) AS t(item)
           JOIN interactions i ON i.user_idx = c.user_idx AND i.item_idx = t.item
           WHERE t.item != c.target""").fetchall()[0][0]
    assert seen == 0  # negatives were never touched by the user
    with pytest.raises(ValueError, match="candidates need at least"):
        build_candidate_sets(con, "crime", negatives=19)


def test_item_knn_and_popularity_on_a_hand_example():
    # u1..u3 co-watch a1 & a2; a3 only with u4; u5's history is a1: a2 should beat a3
    rows = [("u1", "a1", "A", 1), ("u1", "a2", "A", 2), ("u2", "a1", "A", 1), ("u2", "a2", "A", 2),
            ("u3", "a1", "A", 1), ("u3", "a2", "A", 2), ("u4", "a3", "A", 1), ("u4", "a2", "A", 2)]
    rows += [(u, f"x{k}", "A", 10 + k) for u in ("u1", "u2", "u3", "u4") for k in (1, 2)]
    rows += [("u5", "a1", "A", 1), ("u5", "b1", "A", 2), ("u5", "b2", "A", 3)]
    con = load_rows(rows)
    build_interactions(con, data_config(target_domains=(), source_domains=()))
    con.execute("UPDATE domains SET role = 'target' WHERE domain = 'A'")
    build_domain_users(con, "a")
    ids = dict(con.execute("SELECT item_id, item_idx FROM items").fetchall())
    user5 = con.execute("SELECT user_idx FROM users WHERE user_id = 'u5'").fetchall()[0][0]
    con.execute("CREATE TABLE candidate_sets (domain VARCHAR, split VARCHAR, user_idx INTEGER,"
                " target INTEGER, candidates INTEGER[], activity VARCHAR)")
    con.execute("INSERT INTO candidate_sets VALUES ('A', 'valid', ?, ?, ?, 'dense')",
                [user5, ids["b1"], [ids["a2"], ids["a3"], ids["b1"]]])
    cases = load_cases(con, "A", "valid")
    knn = item_knn(con, cases, all_domains=False)[0]
    assert knn[0] > knn[1] == 0 and knn[2] == 0  # a2 co-occurs with a1; a3 and b1 never do
    assert popularity(con, cases)[0].tolist() == [4.0, 1.0, 0.0]  # train counts


def test_classic_systems_are_scored_on_the_same_rows(con):
    con, profile = con
    build_candidate_sets(con, "crime", negatives=2)
    rows = evaluate_domain(con, profile, "crime", with_llm=False)
    systems = {r[2] for r in rows}
    assert {"random", "popularity", "item-knn (domain)", "item-knn (all domains)"} <= systems
    cases = {(r[1], r[2]): r[5] for r in rows if r[4] == "all"}
    assert len({n for (split, _), n in cases.items() if split == "test"}) == 1  # same cases
    assert all(0 <= r[7] <= r[8] <= r[9] <= 1 for r in rows)  # HR@1 <= HR@3 <= HR@5
