"""The product stage without an LLM (the LLM re-ranking runs end to end in
tests/assets/test_train_assets.py): scores over the whole domain, the full-ranking
evaluation and the exported snapshots."""

import json
from contextlib import nullcontext

import numpy as np
import pyarrow.parquet as pq
import pytest

from cprec_core.data.cases import load_cases
from cprec_core.evaluation.baselines import item_knn
from cprec_core.evaluation.candidates import build_candidate_sets
from cprec_core.recommend.batch import recommend_domain, recommendation_sample
from cprec_core.recommend.full_ranking import (PIPELINE, full_ranking_domain, full_ranking_table,
                                               pipeline_ranks, sample_test_users)
from cprec_core.recommend.retrieval import (DomainItems, domain_items, exclude_history,
                                            item_knn_scores, top_n)
from cprec_core.training.next_item import main as train_next_item


def test_top_n_is_best_first_ties_by_column_history_last():
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0]])
    cols, picked = top_n(scores, 4)
    assert cols.tolist() == [[1, 2, 4, 0]] and picked.tolist() == [[3.0, 3.0, 2.0, 1.0]]
    assert top_n(scores, 9)[0].tolist() == [[1, 2, 4, 0, 3]]  # -inf only when nothing else


def test_history_is_excluded_and_foreign_items_refused():
    items = DomainItems("D", np.array([3, 7, 9]), ["a", "b", "c"], ["A", "B", "C"])
    scores = exclude_history(np.zeros((2, 3)), items, [[9, 3], []])
    assert scores.tolist() == [[-np.inf, 0.0, -np.inf], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="items outside 'D'"):
        items.columns([4])


def test_pipeline_rank_is_the_rerank_place_or_the_retrieval_rank():
    retrieved = np.array([[5, 6, 7], [5, 6, 7]])
    rerank = np.array([[0.1, 0.9, 0.5], [1.0, 1.0, 1.0]])
    ranks = pipeline_ranks(retrieved, rerank, np.array([0, 12]), np.array([5, 8]))
    assert ranks.tolist() == [2, 12]  # re-ranked to third; not retrieved: retrieval's rank
    ties = pipeline_ranks(retrieved, rerank, np.array([1, 1]), np.array([6, 6]))
    assert ties.tolist() == [0, 2]  # ties count against the target


def test_full_item_knn_agrees_with_the_candidate_one(con):
    con, profile = con
    build_candidate_sets(con, "crime", negatives=2)
    cases = load_cases(con, "Crime", "test")
    items = domain_items(con, "Crime")
    full = item_knn_scores(con, items, cases.histories)
    on_candidates = np.take_along_axis(full, items.columns(cases.candidates.ravel()).reshape(
        cases.candidates.shape), 1)
    np.testing.assert_allclose(on_candidates, item_knn(con, cases, all_domains=False))


@pytest.fixture
def trained(tmp_path, fixture_config, con):
    """The fixture database with SASRec and GRU4Rec trained for Crime (no LLM)."""
    con, profile = con
    args = ["--config", str(fixture_config), "--data-dir", str(tmp_path / "data"),
            "--domain", "crime"]
    con.close()  # the trainers open the file read-only
    for model in ("sasrec", "gru4rec"):
        assert train_next_item([*args, "--model", model]) == 0
    import duckdb
    con = duckdb.connect(str(profile.layout.database))
    yield con, profile
    con.close()


def test_full_ranking_ranks_every_item_and_reports_the_pipeline(trained):
    con, profile = trained
    lines = []
    summary = full_ranking_domain(lambda: nullcontext(con), profile, "crime", log=lines.append)
    assert {"popularity", "item-knn (domain)", "sasrec", "gru4rec", PIPELINE} == set(summary)
    users, histories, targets = sample_test_users(con, "Crime")
    n_items = len(domain_items(con, "Crime").ids)
    ranks = dict(con.execute("SELECT user_idx, rank FROM full_ranking_cases"
                             " WHERE system = 'sasrec'").fetchall())
    assert len(ranks) == len(users) and all(0 <= r < n_items for r in ranks.values())
    # a rank never counts the user's own history: at most the unseen items minus one
    assert all(ranks[u] <= n_items - len(set(h)) - 1 for u, h in zip(users, histories))
    # no LLM trained: the pipeline is its retrieval model's order, said so in the table
    pipeline = summary[PIPELINE]
    assert pipeline["reranker"] is None
    assert pipeline["ndcg@10"] == summary[pipeline["retrieval"]]["ndcg@10"]
    assert any("no trained LLM system" in x for x in lines)
    header, rows = full_ranking_table(con, resamples=50)
    assert header[-1] == "p" and [r[1] for r in rows][:2] == ["popularity", "item-knn (domain)"]
    (row,) = [r for r in rows if r[1].startswith(PIPELINE)]
    assert row[1].endswith("no LLM (retrieval order)") and row[-1] == "1 (no difference)"
    assert row[6].endswith(f"(N {profile.recommend.retrieve})")
    # a second run replaces the domain's rows
    full_ranking_domain(lambda: nullcontext(con), profile, "crime", log=lines.append)
    assert con.execute("SELECT count(*) FROM full_ranking_cases").fetchone()[0] == 5 * len(users)


def test_recommendations_for_every_user_exported_as_snapshots(trained):
    con, profile = trained
    report = recommend_domain(lambda: nullcontext(con), profile, "crime", log=lambda _: None)
    users = con.execute("SELECT count(*) FROM domain_users WHERE domain = 'Crime'").fetchone()[0]
    assert report["users"] == users and report["reranked_users"] == 0
    rows = con.execute("SELECT user_idx, rank, item_idx, stage, user_id, item_id"
                       " FROM recommendations ORDER BY user_idx, rank").fetchall()
    assert {r[3] for r in rows} == {"retrieval"}
    # every user: k items (fewer only where fewer are unseen: the fixture has 8 items),
    # never one the user has (train, validation or test), never one twice
    seen = {u: set(h) for u, h in con.execute(
        "SELECT user_idx, list_concat(history, [valid_item, test_item]) FROM domain_users"
        " WHERE domain = 'Crime'").fetchall()}
    n_items = len(domain_items(con, "Crime").ids)
    by_user = {u: [] for u in seen}
    for user, _rank, item, *_ in rows:
        by_user[user].append(item)
    assert all(len(items) == min(profile.recommend.k, n_items - len(seen[u] - {None}))
               for u, items in by_user.items())
    assert sum(1 for items in by_user.values() if items) > users // 2
    assert all(not set(items) & seen[u] and len(items) == len(set(items))
               for u, items in by_user.items())
    # source ids, as the data has them
    source = dict(con.execute("SELECT user_idx, user_id FROM users").fetchall())
    assert all(r[4] == source[r[0]] for r in rows)
    # the snapshot: Parquet files named by the version current.json names
    files = profile.layout.recommendation_files("crime")
    current = json.loads(files.current.read_text())
    assert current["version"] == report["version"] and current["k"] == profile.recommend.k
    table = pq.read_table(files.path / current["recommendations"])
    assert table.num_rows == len(rows) and table.column("snapshot")[0].as_py() == report["version"]
    assert pq.read_table(files.path / current["items"]).column_names == [
        "item_idx", "item_id", "title"]
    # each run is a new snapshot; only the newest keep_snapshots stay
    for _ in range(profile.recommend.keep_snapshots + 1):
        recommend_domain(lambda: nullcontext(con), profile, "crime", log=lambda _: None)
    kept = sorted(p.name for p in files.path.glob("recommendations-*.parquet"))
    assert len(kept) == profile.recommend.keep_snapshots
    assert json.loads(files.current.read_text())["recommendations"] == kept[-1]
    assert con.execute("SELECT count(*) FROM recommendations").fetchone()[0] == len(rows)
    sample = recommendation_sample(con, "Crime", users=3)
    assert len(sample) == 3 and all(history and recommended for _, history, recommended in sample)
