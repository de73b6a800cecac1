"""Evaluation on fixed candidate sets: per target domain (``candidate_sets``, ``evaluation``)
and across domains (``leaderboard``)."""

import dagster as dg

from cprec_assets.assets.collab import gru4rec, sasrec
from cprec_assets.assets.data import domain_users
from cprec_assets.automation import DATA, EVALUATE
from cprec_assets.partitions import DUCKDB_POOL, domain_partitions
from cprec_assets.resources import CPRecConfig
from cprec_core.evaluation.candidates import bad_candidate_sets, build_candidate_sets
from cprec_core.evaluation.evaluate import (COST_HEADER, evaluate_domain, low_valid_ratios,
                                             mismatched_candidates, scoring_costs,
                                             scoring_seconds)
from cprec_core.evaluation.leaderboard import build_leaderboard, leaderboard_chart, leaderboard_markdown
from cprec_core.reporting import md_table, query_table


@dg.asset(group_name="evaluation", kinds={"duckdb"}, deps=[domain_users], pool=DUCKDB_POOL,
          partitions_def=domain_partitions, automation_condition=DATA)
def candidate_sets(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """Target + 19 never-touched items per test and validation case, drawn once (fixed seed)."""
    negatives = cprec.load().sft.negatives  # the same 1 + 19 candidates SFT trains on
    with cprec.connect() as con:
        counts = build_candidate_sets(con, context.partition_key, negatives)
    return dg.MaterializeResult(metadata={"dagster/row_count": sum(counts.values()), **counts})


@dg.asset_check(asset=candidate_sets, blocking=True, pool=DUCKDB_POOL)
def twenty_distinct_candidates_with_the_target_once(cprec: CPRecConfig) -> dg.AssetCheckResult:
    """Every stored candidate set, all domains: 20 distinct items, the target exactly once."""
    size = cprec.load().sft.negatives + 1
    with cprec.connect() as con:
        bad = bad_candidate_sets(con, size)
    return dg.AssetCheckResult(passed=bad == 0, metadata={"bad_rows": bad})


@dg.asset(group_name="evaluation", kinds={"duckdb"},
          deps=[candidate_sets, sasrec, gru4rec, "llara_adapter", "sft_adapter", "cpt_adapter"],
          pool=DUCKDB_POOL, partitions_def=domain_partitions, automation_condition=EVALUATE)
def evaluation(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """Every system on the same candidate sets: classic rankings, and for the LLM systems
    (zero-shot, LLaRA, CPRec and the ablations, every seed) likelihood ranking and greedy
    generation (ValidRatio, HR@1), per user subset."""
    profile = cprec.load()
    rows = evaluate_domain(cprec.connect, profile, context.partition_key, log=context.log.info)
    domain = rows[0][0]
    with cprec.connect() as con:
        table = query_table(con, """
            SELECT system, family, count(*) AS seeds, max(cases) AS cases,
                   round(avg(valid_ratio), 3) AS ValidRatio, round(avg("hr@1"), 4) AS "HR@1",
                   round(avg("hr@1 (valid)"), 4) AS "HR@1 (valid)",
                   round(avg("hr@5"), 4) AS "HR@5", round(avg("ndcg@5"), 4) AS "NDCG@5"
            FROM evaluation_results WHERE domain = ? AND split = 'test' AND subset = 'all'
            GROUP BY system, family ORDER BY "HR@1" DESC""", [domain])
        subsets = query_table(con, """
            SELECT system, subset, max(cases) AS cases, round(avg("hr@1"), 4) AS "HR@1"
            FROM evaluation_results WHERE domain = ? AND split = 'test'
            AND family IN ('ranking', 'likelihood (mean)') AND subset != 'all'
            GROUP BY system, subset ORDER BY system, subset""", [domain])
        valid = query_table(con, """
            SELECT system, round("hr@1", 4) AS "HR@1", round("ndcg@5", 4) AS "NDCG@5"
            FROM evaluation_results WHERE domain = ? AND split = 'valid' AND subset = 'all'
            ORDER BY "HR@1" DESC""", [domain])
        costs, seconds = scoring_costs(con, domain), scoring_seconds(con, domain)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(rows),
        "results": dg.MetadataValue.md(table),
        "by_user_subset": dg.MetadataValue.md(subsets),
        "validation": dg.MetadataValue.md(valid),
        "scoring_cost": dg.MetadataValue.md(md_table(COST_HEADER[1:], [c[1:] for c in costs])),
        "llm_scoring_seconds": round(seconds, 1),
    })


@dg.asset_check(asset=evaluation, pool=DUCKDB_POOL)
def every_system_saw_the_stored_candidate_sets(cprec: CPRecConfig) -> dg.AssetCheckResult:
    """Every scored case, every system and domain, used exactly the stored candidate list."""
    with cprec.connect() as con:
        bad = mismatched_candidates(con)
    return dg.AssetCheckResult(passed=bad == 0, metadata={"mismatched_cases": bad})


@dg.asset_check(asset=evaluation, pool=DUCKDB_POOL)
def valid_ratio_above_floor(cprec: CPRecConfig) -> dg.AssetCheckResult:
    """Generation: a ValidRatio under ``evaluation.valid_ratio_floor`` warns (the answers
    rarely name one candidate, so HR@1 over valid answers rests on few cases)."""
    floor = cprec.load().evaluation.valid_ratio_floor
    with cprec.connect() as con:
        low = low_valid_ratios(con, floor)
    return dg.AssetCheckResult(
        passed=not low, severity=dg.AssetCheckSeverity.WARN,
        metadata={"floor": floor, "below_floor": dg.MetadataValue.md(md_table(
            ["domain", "system", "seed", "ValidRatio"], low or [("(none)", "", "", "")]))})


@dg.asset(group_name="evaluation", kinds={"duckdb"}, deps=[evaluation], pool=DUCKDB_POOL,
          automation_condition=DATA)
def leaderboard(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """All target domains side by side: HR@1 with bootstrap intervals and seed spread,
    generation ValidRatio, CPRec against the best baseline, and the paired CPRec-vs-LLaRA test.
    ``make results`` writes the same tables to docs/RESULTS.md."""
    profile = cprec.load()
    with cprec.connect() as con:
        counts = build_leaderboard(con, profile.evaluation.bootstrap)
        markdown = leaderboard_markdown(con)
        png = leaderboard_chart(con, profile.root / "leaderboard.png")
    from cprec_assets.assets.train import png_markdown

    context.log.info(f"leaderboard: {counts}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": counts["rows"], "domains": counts["domains"],
        "leaderboard": dg.MetadataValue.md(markdown),
        "chart": png_markdown(png, "leaderboard"),
    })
