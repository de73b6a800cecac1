"""Evaluation per target domain on fixed candidate sets (issue 5: classic systems so far)."""

import dagster as dg

from cprec_assets.assets.collab import sasrec
from cprec_assets.assets.data import domain_users
from cprec_assets.automation import DATA, EVALUATE
from cprec_assets.partitions import DUCKDB_POOL, domain_partitions
from cprec_assets.resources import CPRecConfig
from cprec_core.evaluation.candidates import bad_candidate_sets, build_candidate_sets
from cprec_core.evaluation.evaluate import evaluate_domain
from cprec_core.reporting import query_table


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
          deps=[candidate_sets, sasrec, "llara_adapter", "sft_adapter"],
          pool=DUCKDB_POOL, partitions_def=domain_partitions, automation_condition=EVALUATE)
def evaluation(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """HR@1/3/5 and NDCG@3/5 of every system on the same candidate sets, per user subset."""
    profile = cprec.load()
    with cprec.connect() as con:
        rows = evaluate_domain(con, profile, context.partition_key, log=context.log.info)
        table = query_table(con, """
            SELECT system, family, split, cases, round("hr@1", 4) AS "HR@1",
                   round("hr@3", 4) AS "HR@3", round("hr@5", 4) AS "HR@5",
                   round("ndcg@5", 4) AS "NDCG@5"
            FROM evaluation_results WHERE domain = ? AND subset = 'all'
            ORDER BY split DESC, "HR@1" DESC""", [rows[0][0]])
    return dg.MaterializeResult(metadata={"dagster/row_count": len(rows),
                                          "results": dg.MetadataValue.md(table)})
