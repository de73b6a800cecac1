import dataclasses
import re
from contextlib import nullcontext

import duckdb
import numpy as np
import pytest

from cprec_core.data.domain_users import build_domain_users
from cprec_core.data.interactions import build_interactions
from cprec_core.layout import RunManifest
from cprec_core.evaluation import evaluate as evaluate_module
from cprec_core.data.cases import load_cases
from cprec_core.evaluation.baselines import item_knn, popularity
from cprec_core.evaluation.candidates import bad_candidate_sets, build_candidate_sets
from cprec_core.evaluation.evaluate import (CASE_COLUMNS, CHOICE_COLUMNS, COST_COLUMNS,
                                             RESULT_COLUMNS, SCHEMA, CaseRow, ChoiceRow, CostRow,
                                             LLMRun, ResultRow, create_tables, evaluate_domain,
                                             mismatched_candidates, pick_lambda, scoring_costs,
                                             zscore)
from cprec_core.evaluation.leaderboard import (bootstrap_interval, build_leaderboard,
                                               leaderboard_chart, leaderboard_markdown, paired_test)
from cprec_core.evaluation.llm import CaseResult
from cprec_core.metrics import hit_ratio, ndcg, one_se_choice, ranking_report, ranks_from_scores
from cprec_core.provenance import git_revision
from tests.conftest import data_config, load_rows


def test_metrics_formulas():
    ranks = np.array([0, 1, 4, 10])
    assert hit_ratio(ranks, 1) == 0.25 and hit_ratio(ranks, 5) == 0.75
    assert ndcg(ranks, 5) == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(6)) / 4)
    # ties count against the target: a constant scorer ranks it last, not first
    assert ranks_from_scores(np.zeros((2, 20)), np.array([0, 5])).tolist() == [19, 19]
    assert ranking_report(np.array([0]))["hr@1"] == 1.0


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
    evaluated = evaluate_domain(lambda: nullcontext(con), profile, "crime", systems=())
    assert evaluated.domain == "Crime"  # as the database names it, not the partition key
    rows = evaluated.rows.results
    assert {"random", "popularity", "item-knn (domain)", "item-knn (all domains)"} <= {
        r.system for r in rows}
    test_all = [r for r in rows if r.subset == "all" and r.split == "test"]
    assert len({r.cases for r in test_all}) == 1  # same cases for every system
    assert all(0 <= r.hr1 <= r.hr3 <= r.hr5 <= 1 for r in rows)
    assert all(r.hr1_valid == r.hr1 and r.valid_ratio == 1 for r in rows)
    # per-case rows agree with the aggregates, and are what the database holds
    for r in test_all:
        hits = con.execute("""SELECT avg(hit::INT) FROM evaluation_cases WHERE domain = 'Crime'
                              AND split = 'test' AND system = ?""", [r.system]).fetchall()[0][0]
        assert hits == pytest.approx(r.hr1)
    columns = ", ".join(f'"{c}"' for c in RESULT_COLUMNS)
    stored = con.execute(f"SELECT {columns} FROM evaluation_results ORDER BY rowid").fetchall()
    assert stored == [r.values() for r in rows]
    # every scored case saw the stored candidate list; changing a stored set is detected
    assert mismatched_candidates(con) == 0
    con.execute("""UPDATE candidate_sets SET candidates = list_reverse(candidates)
                   WHERE user_idx = (SELECT min(user_idx) FROM candidate_sets) AND split = 'test'""")
    assert mismatched_candidates(con) == len(test_all)
    # a second evaluation replaces the domain's rows instead of adding to them
    before = con.execute("SELECT count(*) FROM evaluation_cases").fetchall()[0][0]
    evaluate_domain(lambda: nullcontext(con), profile, "crime", systems=())
    assert con.execute("SELECT count(*) FROM evaluation_cases").fetchall()[0][0] == before
    # every result row names the code that scored it
    assert con.execute("SELECT DISTINCT git_revision FROM evaluation_results").fetchall() == [
        (git_revision(),)]


def test_each_row_type_has_its_tables_columns_in_order():
    """The rows are written by position (``values()``): one field per column, same order."""
    for row, columns in ((ResultRow, RESULT_COLUMNS), (CaseRow, CASE_COLUMNS),
                         (CostRow, COST_COLUMNS), (ChoiceRow, CHOICE_COLUMNS)):
        names = [f.name for f in dataclasses.fields(row)]
        assert len(names) == len(columns), row
        assert [n for n in names if n in columns] == [c for c in columns if c in names], row
    row = ResultRow("Crime", "test", "base", 0, "generation", "all", 3, 0.5, 0.25, 0.5)
    assert row.values()[-4:] == (None,) * 4 and not hasattr(row, "__getitem__")


def test_llm_scoring_costs_are_stored_replaced_and_summed(con, monkeypatch):
    """What each LLM system run cost is stored with its results, replaced with them, kept by a
    classic-only re-evaluation, and summed per system over seeds. The model is a stand-in:
    what is tested is the bookkeeping, not the scorer (tests/core/evaluation/test_llm_scoring.py)."""
    con, profile = con
    build_candidate_sets(con, "crime", negatives=2)
    calls = []

    def fake_llm_results(titles, profile, slug, cases, log=print, runs=None, every_s=None):
        calls.append(len(cases.users))
        n = len(cases.users)
        scored = [CaseResult(np.arange(3.0), np.arange(3.0), "x", int(c[0]))
                  for c in cases.candidates]
        return {("llara", 0): LLMRun(scored, 2.0, 0.5 * n, 1, n - 1, "cpu", 2),
                ("llara", 1): LLMRun(scored, 4.0, 0.3 * n, n, 0, "cpu", 2),
                ("base", 0): LLMRun(scored, 1.0, 0.1 * n, None, None, "cpu", 2)}

    monkeypatch.setattr(evaluate_module, "llm_results", fake_llm_results)
    evaluate_domain(lambda: nullcontext(con), profile, "crime")
    n = calls[0]
    rows = {r.system: r for r in scoring_costs(con, "Crime")}
    llara, base = rows["llara"], rows["base"]
    assert (llara.seeds, llara.cases, llara.seconds_per_case) == (2, n, pytest.approx(0.4))
    assert llara.minutes == pytest.approx(round((6.0 + 0.8 * n) / 60, 1))
    assert llara.answers_decoded == pytest.approx(round((n - 1) / (2 * n), 2))
    assert base.answers_decoded is None and base.devices == "cpu x2"
    # the order they were scored
    assert [r.system for r in scoring_costs(con)] == ["llara", "base"]
    # a second full evaluation replaces the domain's cost rows; a classic-only one keeps them
    evaluate_domain(lambda: nullcontext(con), profile, "crime")
    evaluate_domain(lambda: nullcontext(con), profile, "crime", systems=())
    assert con.execute("SELECT count(*), count(DISTINCT git_revision) FROM evaluation_costs"
                       ).fetchall() == [(3, 1)]
    assert len(calls) == 2


def test_scoring_costs_of_a_database_without_them_are_empty():
    assert scoring_costs(duckdb.connect()) == []


def test_compute_summary_says_which_scoring_was_not_recorded():
    from cprec_core.evaluation.results import compute_summary

    con = duckdb.connect()
    create_tables(con)
    for domain in ("Crime", "Sci-Fi"):  # both domains' LLM systems were scored ...
        con.execute("""INSERT INTO evaluation_results (domain, split, system, seed, family,
                       subset, cases) VALUES (?, 'test', 'llara', 0, 'generation', 'all', 4)""",
                    [domain])
    con.execute("""INSERT INTO evaluation_costs (domain, split, system, seed, cases, load_seconds,
                   score_seconds, answers_read_off, answers_decoded, device, threads)
                   VALUES ('Crime', 'test', 'llara', 0, 4, 6, 1194, 1, 3, 'cpu', 2)""")
    text = compute_summary(con, [RunManifest(kind="cpt", train_seconds=1800)],
                           [RunManifest(kind="sft", train_seconds=600)])
    # ... but only Crime's cost was recorded: the total says it leaves Sci-Fi out
    assert text.startswith("Recorded: CPT 30 min, SFT 10 min, LLM scoring Crime 20 min,"
                           " LLM scoring Sci-Fi not recorded; 1.00 hours without the scoring"
                           " not recorded.")
    assert "| Crime | llara | 1 | 4 | 298.5 | 20 | 0.75 | cpu x2 |" in text


def test_generation_only_where_the_prompt_lists_the_candidates(tmp_path, monkeypatch):
    import torch

    from cprec_core.config import load_profile
    from cprec_core.evaluation.llm import LLMScorer

    profile = load_profile("demo", {"data_dir": str(tmp_path)})

    asked = {}

    class Scorer:
        device, answers_read_off, answers_decoded = torch.device("cpu"), 0, 0

        def __init__(self, name, shuffled):
            self.name, self.shuffled = name, shuffled
            self.listing = name != "cprec_rank"  # as with sft.rank.listing false

        def evaluate(self, samples, titles, batch_size, generate, max_new_tokens, progress):
            asked[(self.name, self.shuffled)] = generate
            return []

    def load(cls, profile, slug, name, seed, shuffle_seed=None, shuffle="all"):
        return Scorer(name, shuffled=shuffle_seed is not None)

    monkeypatch.setattr(LLMScorer, "load", classmethod(load))

    class NoCases:
        split = "test"

        def prompt_cases(self, history):
            return []

    assert profile.evaluation.generation
    out = evaluate_module.llm_results({}, profile, "crime", NoCases(), runs=[
        ("cprec", 0, None), ("cprec", 0, "all"), ("cprec_rank", 0, None)])
    assert asked == {("cprec", False): True, ("cprec", True): False, ("cprec_rank", False): False}
    assert out[("cprec_rank", 0)].answers_read_off is None  # no generation rows follow


def test_goals_section_says_per_domain_which_goal_is_met():
    from cprec_core.evaluation.leaderboard import SCHEMA as LEADERBOARD_SCHEMA
    from cprec_core.evaluation.results import goals_section

    con = duckdb.connect()
    con.execute(LEADERBOARD_SCHEMA)
    assert goals_section(con, []) == []  # no cprec_rank on the leaderboard: no section
    for domain, rank_hr in (("Crime", 0.3), ("Sci-Fi", 0.1)):
        for system, hr in (("popularity", 0.2), ("cprec", 0.1), ("cprec_rank", rank_hr)):
            con.execute("INSERT INTO leaderboard (domain, system, \"hr@1\") VALUES (?, ?, ?)",
                        [domain, system, hr])
        for a, b, diff, p in (("cprec_rank", "cprec", 0.2, 0.001), ("fused", "gru4rec", 0.02, 0.4),
                              ("cprec_rank", "cprec_rank (shuffled emb)", 0.1, 0.01)):
            con.execute("""INSERT INTO leaderboard_tests (domain, family, system_a, system_b,
                           diff, p_value) VALUES (?, 'ranking', ?, ?, ?, ?)""",
                        [domain, a, b, diff, p])
    sft = [RunManifest(kind="sft", system="cprec_rank", domain=d,
                       validation={"loss per answer": x})
           for d, x in (("Crime", 2.1), ("Crime", 2.9), ("Sci-Fi", 2.5))]
    lines = "\n".join(goals_section(con, sft)).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines
             if line.startswith("| ") and "---" not in line]
    assert cells[0] == ["goal", "Crime", "Sci-Fi", "met"]
    goals = {row[0]: row[1:] for row in cells[1:]}
    assert goals["`cprec_rank` HR@1 above popularity"] == ["0.300 vs 0.200", "0.100 vs 0.200",
                                                          "no"]
    assert goals["`cprec_rank` above `cprec`, paired p < 0.05"][-1] == "yes"
    assert goals["validation loss per answer of the kept `cprec_rank` weights below ln 20 ="
                 " 3.00"] == ["2.10-2.90", "2.50-2.50", "yes"]
    assert not any("cprec_residual" in goal for goal in goals)  # no residual rows yet
    assert goals["`cprec_rank` above its shuffled-vector ablation, paired p < 0.05"][-1] == "yes"
    assert not any("cprec_dpo" in goal for goal in goals)  # no DPO rows yet

    # with the residual ranker and the fused system: against their classic partners, one
    # domain enough for "above", every domain for "not below"
    for domain, diff, p in (("Crime", 0.05, 0.01), ("Sci-Fi", -0.01, 0.8)):
        for system in ("cprec_residual", "fused"):
            con.execute("INSERT INTO leaderboard (domain, system, \"hr@1\") VALUES (?, ?, 0.3)",
                        [domain, system])
            con.execute("""INSERT INTO leaderboard_tests (domain, family, system_a, system_b,
                           diff, p_value) VALUES (?, 'ranking', ?, 'sasrec', ?, ?)""",
                        [domain, system, diff, p])
        con.execute("""INSERT INTO leaderboard_tests (domain, family, system_a, system_b, diff,
                       p_value) VALUES (?, 'ranking', 'cprec_residual', ?, 0.1, 0.001)""",
                    [domain, "cprec_residual (shuffled candidate emb)"])
    goals = {row[0]: row[1:] for row in ([c.strip() for c in line.strip("|").split("|")]
                                         for line in "\n".join(goals_section(con, sft)).splitlines()
                                         if line.startswith("| ") and "---" not in line)}
    assert goals["`cprec_residual` not below its classic partner"][-1] == "no"
    assert goals["`cprec_residual` above its classic partner, paired p < 0.05, on one domain"] == [
        "vs sasrec: +0.050, p 0.01", "vs sasrec: -0.010, p 0.8", "yes"]
    assert goals["`cprec_residual` above its shuffled-vector ablation, paired p < 0.05"][-1] == "yes"
    assert goals["`cprec_residual` above `llara_residual`, paired p < 0.05 (reported)"][
        -1] == "not measured"
    assert goals["`fused` above its classic system, paired p < 0.05"][-1] == "no"
    con.execute("DELETE FROM leaderboard WHERE system IN ('cprec_residual', 'fused')")

    # with DPO: above cprec_rank on one domain is enough; ValidRatio where generated
    for domain, p in (("Crime", 0.01), ("Sci-Fi", 0.5)):
        con.execute("INSERT INTO leaderboard (domain, system, \"hr@1\") VALUES (?, 'cprec_dpo', 0.3)",
                    [domain])
        con.execute("""INSERT INTO leaderboard_tests (domain, family, system_a, system_b, diff,
                       p_value) VALUES (?, 'ranking', 'cprec_dpo', 'cprec_rank', 0.05, ?)""",
                    [domain, p])
    for system, ratio in (("cprec_rank", 0.90), ("cprec_dpo", 0.89)):
        con.execute("UPDATE leaderboard SET valid_ratio = ? WHERE domain = 'Crime' AND system = ?",
                    [ratio, system])
    lines = "\n".join(goals_section(con, sft)).splitlines()
    goals = {row[0]: row[1:] for row in ([c.strip() for c in line.strip("|").split("|")]
                                         for line in lines if line.startswith("| ")
                                         and "---" not in line)}
    assert goals["`cprec_dpo` above `cprec_rank`, paired p < 0.05, on at least one domain"] == [
        "+0.050, p 0.01", "+0.050, p 0.5", "yes"]
    crime, scifi, met = goals["`cprec_dpo` ValidRatio within 0.02 of `cprec_rank`'s"]
    assert (crime, met) == ("0.890 vs 0.900", "not measured")
    assert scifi.startswith("no generation rows (generation off")  # says why
    assert goals["`cprec_dpo` above `llara_dpo`, paired p < 0.05 (reported)"][-1] == "not measured"


def test_results_of_the_layout_before_git_revision_are_kept():
    con = duckdb.connect()
    con.execute(SCHEMA.replace(", git_revision VARCHAR", ""))
    con.execute("""INSERT INTO evaluation_results (domain, split, system, seed, family, subset,
                   cases, "hr@1") VALUES ('Crime', 'test', 'cprec', 0, 'generation', 'all', 5, 0.2)""")
    create_tables(con)
    assert con.execute('SELECT "hr@1", git_revision FROM evaluation_results').fetchall() == [(0.2, None)]


def test_paired_test_and_bootstrap_on_known_hits():
    a = np.zeros((100, 3), bool)
    b = np.zeros((100, 3), bool)
    a[:60] = True  # a hits 60 % of cases in every seed, b 30 %, b's hits inside a's
    b[:30] = True
    t = paired_test(a, b, resamples=500)
    assert (t.pairs, t.a_only, t.b_only) == (300, 90, 0)
    assert t.diff == pytest.approx(0.3) and t.low < 0.3 < t.high and t.p_value < 1e-20
    same = paired_test(a, a, resamples=200)
    assert same.p_value == 1.0 and same.diff == 0
    low, high = bootstrap_interval(np.r_[np.ones(50), np.zeros(50)], 2000)
    assert 0.38 < low < 0.45 and 0.55 < high < 0.62  # ~ 0.5 +- 1.96 * 0.05


def test_leaderboard_tables_from_evaluation_cases(tmp_path):
    """Hand-made per-case rows: two domains, LLaRA and CPRec over two seeds, a baseline."""
    con = duckdb.connect()
    create_tables(con)
    rng = np.random.default_rng(0)
    rows = []
    for domain in ("Crime", "Sci-Fi"):
        for system, seeds, family, rate in (("popularity", [0], "ranking", 0.3),
                                            ("llara", [0, 1], "likelihood (mean)", 0.1),
                                            ("cprec", [0, 1], "likelihood (mean)", 0.5),
                                            ("cprec", [0, 1], "generation", 0.4)):
            for seed in seeds:
                for user in range(200):
                    hit = bool(rng.random() < rate)
                    rows.append((domain, "test", system, seed, family, user, "h", 0 if hit else 5,
                                 True, hit, None))
    con.executemany("INSERT INTO evaluation_cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    counts = build_leaderboard(con, resamples=200)
    assert counts == {"domains": 2, "rows": 6, "tests": 2}  # no LLaRA generation: one test each
    board = {(d, s): (seeds, hr, sd, lo, hi) for d, s, _, seeds, _, hr, sd, lo, hi, *_ in
             con.execute("SELECT * FROM leaderboard").fetchall()}
    seeds, hr, sd, lo, hi = board[("Crime", "cprec")]
    assert seeds == 2 and sd is not None and lo < hr < hi and abs(hr - 0.5) < 0.06
    assert board[("Crime", "popularity")][2] is None  # one seed: no spread
    text = leaderboard_markdown(con)
    assert "### Crime (test cases: 200)" in text and "popularity **best baseline**" in text
    assert "CPRec beats it" in text
    assert "| Crime | cprec vs llara | ranking | 400 |" in text  # 200 cases x 2 seeds pooled
    png = leaderboard_chart(con, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaderboard_uses_validation_choices_and_pairs_fused_and_shuffled_runs():
    """The headline family comes from evaluation_choices; the fused system is paired with its
    one-seed classic partner on every seed, a shuffled run with its system's seed 0."""
    con = duckdb.connect()
    create_tables(con)
    rng = np.random.default_rng(1)
    rows = []
    for system, seeds, family, rate in (("sasrec", [0], "ranking", 0.3),
                                        ("fused", [0, 1], "ranking", 0.45),
                                        ("cprec_rank", [0, 1], "likelihood (sum)", 0.4),
                                        ("cprec_rank", [0, 1], "likelihood (mean)", 0.1),
                                        ("cprec_rank (shuffled emb)", [0], "likelihood (sum)", 0.2),
                                        ("cprec_rank (shuffled emb)", [0], "likelihood (mean)", 0.05)):
        for seed in seeds:
            for user in range(150):
                hit = bool(rng.random() < rate)
                rows.append(("Crime", "test", system, seed, family, user, "h", 0 if hit else 5,
                             True, hit, None))
    con.executemany("INSERT INTO evaluation_cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.executemany("INSERT INTO evaluation_choices VALUES (?, ?, ?, ?, ?, ?)", [
        ("Crime", "cprec_rank", 0, "scoring", "likelihood (sum)", ""),
        ("Crime", "cprec_rank", 1, "scoring", "likelihood (sum)", ""),
        ("Crime", "cprec_rank (shuffled emb)", 0, "scoring", "likelihood (sum)", ""),
        ("Crime", "fused", 0, "classic", "sasrec", ""),
        ("Crime", "fused", 1, "classic", "sasrec", "")])
    build_leaderboard(con, resamples=100)
    families = dict(con.execute("SELECT system, family FROM leaderboard").fetchall())
    assert families == {"sasrec": "ranking", "fused": "ranking",
                        "cprec_rank": "likelihood (sum)",
                        "cprec_rank (shuffled emb)": "likelihood (sum)"}
    tests = {(a, b): n for a, b, n in con.execute(
        "SELECT system_a, system_b, pairs FROM leaderboard_tests").fetchall()}
    assert tests == {("fused", "sasrec"): 300, ("cprec_rank", "cprec_rank (shuffled emb)"): 150}
    text = leaderboard_markdown(con)
    assert "| cprec_rank | sum | 2 |" in text
    assert text.index("| cprec_rank |") < text.index("| cprec_rank (shuffled emb) |")


def test_fusion_picks_lambda_on_validation():
    classic = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    llm = np.array([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
    target = np.array([1, 0])  # the classic scores miss both, the LLM's hit both
    lam, by_lambda = pick_lambda(classic, llm, target, (0.0, 0.5, 4.0))
    # MRR: the classic ranks are 1 and 2 (0.5, 1/3), the LLM's 0 and 0
    assert by_lambda[0.0] == pytest.approx((1 / 2 + 1 / 3) / 2) and by_lambda[4.0] == 1.0
    assert lam == 4.0  # better than lambda 0 by more than one standard error
    assert pick_lambda(classic, classic, np.array([0, 1]), (0.0, 1.0))[0] == 0.0  # ties: smallest


def test_one_standard_error_prefers_the_simpler_choice_within_noise():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    noisy = {"simple": base, "complex": base + rng.normal(0.01, 0.2, 200)}  # a hair better
    assert one_se_choice(noisy, "simple")[0] == "simple"
    clear = {"simple": base, "complex": base + rng.normal(0.2, 0.2, 200)}
    assert one_se_choice(clear, "simple")[0] == "complex"
    losses = {"last": base, "best": base - 0.3}  # lower is better
    assert one_se_choice(losses, "last", higher_is_better=False)[0] == "best"
    z = zscore(np.array([[1.0, 1.0], [0.0, 2.0]]))
    assert np.allclose(z, [[0, 0], [-1, 1]])


def test_candidate_sets_and_classic_scoring_report_progress(con):
    """Every user of the candidate-set draw and every classic system's time, with no
    interval (``every_s=0``); the closing lines whatever the interval."""
    con, profile = con
    lines = []
    counts = build_candidate_sets(con, "crime", negatives=2, log=lines.append, every_s=0)
    users = con.execute("SELECT count(*) FROM domain_users WHERE domain = 'Crime'").fetchone()[0]
    assert len(lines) == 2 * users
    assert lines[0].startswith(f"crime candidate sets (valid): 1/{users} users, ")
    assert lines[-1].startswith(f"crime candidate sets (test): {users}/{users} users in ")
    lines.clear()
    evaluate_domain(lambda: nullcontext(con), profile, "crime", systems=(),
                    log=lines.append, every_s=0)
    cases = min(counts["test"], profile.evaluation.max_cases or counts["test"])
    assert lines[0].startswith("crime: ") and lines[0].endswith(f" and {cases:,} test cases")
    test = [x for x in lines if x.startswith(f"crime test, {cases:,} cases: ")]
    systems = ("random", "popularity", "item-knn (domain)", "item-knn (all domains)")
    assert [x.split(": ")[1].split(" scored")[0] for x in test[:-1]] == list(systems)
    assert test[1].endswith(" (2/4 classic systems)")
    assert re.match(r"crime test, \d+ cases: 4 classic systems scored in .+ \(random .+,"
                    r" popularity .+, item-knn \(domain\) .+, item-knn \(all domains\) .+\)$",
                    test[-1])
    lines.clear()
    evaluate_domain(lambda: nullcontext(con), profile, "crime", systems=(),
                    log=lines.append)  # the default interval: the closing line per split
    assert len(lines) == 3 and lines[1].startswith("crime valid, ")
    assert lines[2].startswith(f"crime test, {cases:,} cases: 4 classic systems scored in ")


def test_llm_scoring_reports_cases_done_and_time_left(tmp_path, monkeypatch):
    """Each LLM run: loading, loaded, then its cases after every batch with ``every_s=0``
    (time per case, time left), and the total; with the default interval a fast run shows
    its first batch and the total."""
    import torch

    from cprec_core.config import load_profile
    from cprec_core.evaluation.llm import LLMScorer

    profile = load_profile("demo", {"data_dir": str(tmp_path)})
    profile = dataclasses.replace(profile, evaluation=dataclasses.replace(
        profile.evaluation, batch_size=2))  # 5 cases: batches of 2, 2 and 1

    class Scorer:
        device, answers_read_off, answers_decoded, listing = torch.device("cpu"), 3, 2, True

        def evaluate(self, samples, titles, batch_size, generate, max_new_tokens, progress):
            for start in range(0, len(samples), batch_size):
                progress(min(start + batch_size, len(samples)), len(samples))
            return [CaseResult(np.zeros(3), np.zeros(3)) for _ in samples]

    monkeypatch.setattr(LLMScorer, "load", classmethod(lambda cls, *a, **k: Scorer()))

    class FiveCases:
        split = "test"

        def prompt_cases(self, history):
            return [object()] * 5

    runs = [("llara", 0, None), ("llara", 0, "all")]
    lines = []
    evaluate_module.llm_results({}, profile, "crime", FiveCases(), lines.append, runs, every_s=0)
    first = [x for x in lines if x.startswith("crime test: llara seed 0: ")]
    assert first[0] == "crime test: llara seed 0: loading (LLM run 1/2)"
    assert first[1].startswith("crime test: llara seed 0: loaded in ")
    assert first[1].endswith(", scoring 5 cases (likelihood and greedy generation)")
    assert [x.split(": ")[2].split(",")[0].split(" in")[0] for x in first[2:-1]] == [
        "2/5 cases", "4/5 cases", "5/5 cases"]
    assert all(re.search(r": \d/5 cases, .+ each, about .+ left$", x) for x in first[2:4])
    assert re.search(r": 5/5 cases in .+, .+ each$", first[4])
    assert first[5] == ("crime test: llara seed 0: 3 greedy answers read off the likelihood"
                        " forward, 2 decoded")
    shuffled = [x for x in lines if x.startswith("crime test: llara (shuffled emb) seed 0: ")]
    assert shuffled[0].endswith("(LLM run 2/2)") and shuffled[1].endswith("(likelihood)")
    lines.clear()
    evaluate_module.llm_results({}, profile, "crime", FiveCases(), lines.append, runs[:1])
    scored = [x.split(": ")[2].split(",")[0].split(" in")[0] for x in lines if "/5 cases" in x]
    assert scored == ["2/5 cases", "5/5 cases"]  # the first batch and the total


def test_a_dpo_system_that_loses_the_answer_format_is_reported():
    import duckdb

    from cprec_core.evaluation.evaluate import SCHEMA, dpo_format_drops

    con = duckdb.connect()
    con.execute(SCHEMA)
    rows = [("crime", "cprec_rank", 0, 0.90), ("crime", "cprec_dpo", 0, 0.85),
            ("sci-fi", "cprec_rank", 0, 0.90), ("sci-fi", "cprec_dpo", 0, 0.89),
            ("crime", "llara_rank", 0, 0.50), ("crime", "llara_dpo", 0, 0.60)]
    con.executemany("INSERT INTO evaluation_results (domain, split, system, seed, family, subset,"
                    " cases, valid_ratio) VALUES (?, 'test', ?, ?, 'generation', 'all', 50, ?)",
                    rows)
    assert dpo_format_drops(con, 0.02) == [("crime", "cprec_dpo", 0, 0.85, 0.9)]
    assert dpo_format_drops(con, 0.1) == []
