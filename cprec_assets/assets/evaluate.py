"""Evaluation on fixed candidate sets: per target domain (``candidate_sets``, ``evaluation``)
and across domains (``leaderboard``). The evaluation's upstream is every asset whose weights
a registered system reads (cprec_core.systems.evaluation_inputs), so a re-trained adapter of
any system, ablations included, marks it stale."""

import dataclasses

import dagster as dg

from cprec_assets.assets.data import domain_users
from cprec_assets.automation import DATA, EVALUATE
from cprec_assets.metadata import markdown, png, table
from cprec_assets.partitions import DUCKDB_POOL, domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_assets.tracking import MlflowTracking
from cprec_assets.run_log import run_log
from cprec_assets.versions import code_version
from cprec_core.evaluation.candidates import bad_candidate_sets, build_candidate_sets
from cprec_core.evaluation.evaluate import (dpo_format_drops, evaluate_domain, evaluation_tables,
                                            low_valid_ratios, mismatched_candidates,
                                            scoring_seconds)
from cprec_core.evaluation.leaderboard import (build_leaderboard, domain_rows, leaderboard_chart,
                                               leaderboard_markdown, leaderboard_rows,
                                               log_leaderboard, tracked_metrics)
from cprec_core.tracking import flatten, log_run, run_tags, target
from cprec_core.recommend.full_ranking import full_ranking_markdown
from cprec_core.systems import evaluation_inputs


@dg.asset(group_name="evaluation", kinds={"duckdb"}, deps=[domain_users], pool=DUCKDB_POOL,
          partitions_def=domain_partitions, code_version="1", automation_condition=DATA)
def candidate_sets(context: dg.AssetExecutionContext,
                   cprec: ProfileResource) -> dg.MaterializeResult:
    """Target + 19 never-touched items per test and validation case, drawn once (fixed seed)."""
    negatives = cprec.profile.sft.negatives  # the same 1 + 19 candidates SFT trains on
    with cprec.connect() as con:
        counts = build_candidate_sets(con, context.partition_key, negatives,
                                      log=run_log(context))
    return dg.MaterializeResult(metadata={"dagster/row_count": sum(counts.values()), **counts})


@dg.asset_check(asset=candidate_sets, blocking=True, pool=DUCKDB_POOL)
def twenty_distinct_candidates_with_the_target_once(
        cprec: ProfileResource) -> dg.AssetCheckResult:
    """Every stored candidate set, all domains: 20 distinct items, the target exactly once."""
    with cprec.connect() as con:
        bad = bad_candidate_sets(con, cprec.profile.sft.negatives + 1)
    return dg.AssetCheckResult(passed=bad == 0, metadata={"bad_rows": bad})


class EvaluationRunConfig(dg.Config):
    # LLM systems to score, e.g. a newly added or re-trained one; the other LLM systems'
    # rows stay. Empty: every LLM system of the profile.
    systems: list[str] = []


@dg.asset(group_name="evaluation", kinds={"duckdb"}, deps=[candidate_sets, *evaluation_inputs()],
          pool=DUCKDB_POOL, partitions_def=domain_partitions,
          code_version=code_version("1", "evaluation", "model"), automation_condition=EVALUATE)
def evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig,
               cprec: ProfileResource, mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Every system on the same candidate sets: classic rankings, and for the LLM systems
    (zero-shot, LLaRA, CPRec and the ablations, every seed) likelihood ranking and greedy
    generation (ValidRatio, HR@1), per user subset. Launched with ``systems``, only those LLM
    systems are scored and the others' rows kept. Each system's HR@1 with its interval,
    NDCG@5 and ValidRatio, and the paired tests, go to one MLflow run of the domain."""
    profile, key = cprec.profile, context.partition_key
    evaluated = evaluate_domain(cprec.connect, profile, key, config.systems or None,
                                log=run_log(context))
    tracked_profile = mlflow.profile(profile)
    with cprec.connect() as con:
        tables = evaluation_tables(con, evaluated.domain)
        seconds = scoring_seconds(con, evaluated.domain)
        rows, tests = (domain_rows(con, evaluated.domain, profile.evaluation.bootstrap)
                       if target(tracked_profile) else ([], []))
    tracked = log_run(tracked_profile, name=f"evaluation {key}",  # the database closed
                      tags={**run_tags("evaluation", domain=key, profile=profile.name),
                            **mlflow.tags(context)},
                      metrics=tracked_metrics(rows, tests),
                      params=flatten({"evaluation": dataclasses.asdict(profile.evaluation)}),
                      log=context.log.warning)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(evaluated.rows.results), **markdown(tables),
        **mlflow.run_metadata(profile, tracked and tracked["run_id"]),
        "llm_scoring_seconds": round(seconds, 1)})


@dg.asset_check(asset=evaluation, pool=DUCKDB_POOL)
def every_system_saw_the_stored_candidate_sets(cprec: ProfileResource) -> dg.AssetCheckResult:
    """Every scored case, every system and domain, used exactly the stored candidate list."""
    with cprec.connect() as con:
        bad = mismatched_candidates(con)
    return dg.AssetCheckResult(passed=bad == 0, metadata={"mismatched_cases": bad})


@dg.asset_check(asset=evaluation, pool=DUCKDB_POOL)
def valid_ratio_above_floor(cprec: ProfileResource) -> dg.AssetCheckResult:
    """Generation: a ValidRatio under ``evaluation.valid_ratio_floor`` warns (the answers
    rarely name one candidate, so HR@1 over valid answers rests on few cases)."""
    floor = cprec.profile.evaluation.valid_ratio_floor
    with cprec.connect() as con:
        low = low_valid_ratios(con, floor)
    return dg.AssetCheckResult(passed=not low, severity=dg.AssetCheckSeverity.WARN, metadata={
        "floor": floor, "below_floor": table(["domain", "system", "seed", "ValidRatio"], low)})


@dg.asset_check(asset=evaluation, pool=DUCKDB_POOL)
def dpo_keeps_the_answer_format(cprec: ProfileResource) -> dg.AssetCheckResult:
    """DPO is known to damage the output format: a DPO system whose generation ValidRatio is
    more than ``dpo.valid_ratio_margin`` below its SFT system's warns."""
    margin = cprec.profile.dpo.valid_ratio_margin
    with cprec.connect() as con:
        drops = dpo_format_drops(con, margin)
    return dg.AssetCheckResult(passed=not drops, severity=dg.AssetCheckSeverity.WARN, metadata={
        "margin": margin, "drops": table(
            ["domain", "DPO system", "seed", "ValidRatio", "its SFT system's"], drops)})


@dg.asset(group_name="evaluation", kinds={"duckdb"}, deps=[evaluation, "full_ranking"],
          pool=DUCKDB_POOL, code_version=code_version("1", "evaluation"),
          automation_condition=DATA)
def leaderboard(context: dg.AssetExecutionContext, cprec: ProfileResource,
                mlflow: MlflowTracking) -> dg.MaterializeResult:
    """All target domains side by side: HR@1 with bootstrap intervals and seed spread,
    generation ValidRatio, CPRec against the best baseline, and the paired CPRec-vs-LLaRA test;
    then the full-ranking table (cprec_core.recommend.full_ranking). ``make results`` writes
    the same tables to docs/RESULTS.md."""
    profile = cprec.profile
    with cprec.connect() as con:
        counts = build_leaderboard(con, profile.evaluation.bootstrap)
        board = "\n\n".join(filter(None, [
            leaderboard_markdown(con), full_ranking_markdown(con, profile.evaluation.bootstrap)]))
        chart = leaderboard_chart(con, profile.layout.leaderboard_chart)
        rows, tests = leaderboard_rows(con)
    profile.layout.leaderboard_markdown.write_text(board + "\n")
    tracked = log_leaderboard(rows, tests, mlflow.profile(profile), "leaderboard",  # closed
                              [profile.layout.leaderboard_markdown, chart], "leaderboard",
                              mlflow.tags(context), context.log.warning)
    context.log.info(f"leaderboard: {counts}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": counts["rows"], "domains": counts["domains"],
        **mlflow.run_metadata(profile, tracked and tracked["run_id"]),
        "leaderboard": dg.MetadataValue.md(board), "chart": png(chart, "leaderboard")})
