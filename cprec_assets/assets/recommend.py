"""The product stage per target domain: the full-ranking evaluation (``full_ranking``) and
the recommendations for every user (``recommendations``), both from the two-stage pipeline
of cprec_core.recommend. Their upstream is every model a system of the registry reads and
the ``evaluation`` (whose fusion lambda the pipeline re-uses), so a re-trained model marks
them stale and the automation re-materialises them."""

import dagster as dg

from cprec_assets.assets.evaluate import evaluation
from cprec_assets.automation import RECOMMEND
from cprec_assets.metadata import markdown, table
from cprec_assets.partitions import DUCKDB_POOL, domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_assets.tracking import MlflowTracking, models_used
from cprec_assets.run_log import run_log
from cprec_assets.versions import code_version
from cprec_core.recommend.batch import recommend_domain, recommendation_sample
from cprec_core.recommend.full_ranking import full_ranking_domain, full_ranking_markdown
from cprec_core.systems import evaluation_inputs

UPSTREAM = [evaluation, "sasrec", "gru4rec", *evaluation_inputs()]


@dg.asset(group_name="evaluation", kinds={"duckdb"}, deps=list(dict.fromkeys(UPSTREAM)),
          pool=DUCKDB_POOL, partitions_def=domain_partitions,
          code_version=code_version("1", "recommend"), automation_condition=RECOMMEND)
def full_ranking(context: dg.AssetExecutionContext, cprec: ProfileResource) -> dg.MaterializeResult:
    """Each test item ranked against every item of its domain (HR@10, NDCG@10): popularity,
    item-kNN, SASRec, GRU4Rec and the two-stage pipeline with its retrieval recall@N."""
    summary = full_ranking_domain(cprec.connect, cprec.profile, context.partition_key,
                                  log=run_log(context))
    with cprec.connect() as con:
        text = full_ranking_markdown(con, cprec.profile.evaluation.bootstrap)
    return dg.MaterializeResult(metadata={
        **markdown({"full_ranking": text}),
        **{f"{system} ndcg@10": round(m["ndcg@10"], 4) for system, m in summary.items()}})


@dg.asset(group_name="product", kinds={"duckdb", "parquet"}, deps=list(dict.fromkeys(UPSTREAM)),
          pool=DUCKDB_POOL, partitions_def=domain_partitions,
          code_version=code_version("1", "recommend"), automation_condition=RECOMMEND)
def recommendations(context: dg.AssetExecutionContext, cprec: ProfileResource,
                    mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Top k unseen items for every user of the domain (retrieval by the better classic
    model, re-ranking by the best LLM system), stored in DuckDB and exported as the Parquet
    snapshot the HTTP service reads (``make serve``). The metadata names the registered
    adapter versions and the MLflow runs of the models it used."""
    profile = cprec.profile
    report = recommend_domain(cprec.connect, profile, context.partition_key,
                              log=run_log(context))
    with cprec.connect() as con:
        sample = recommendation_sample(con, report["domain"])
    files = profile.layout.recommendation_files(context.partition_key)
    rerank = report["models"]["rerank"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(report["version"]),
        metadata={
            "dagster/row_count": report["rows"], "users": report["users"],
            "reranked_users": report["reranked_users"], "snapshot": report["version"],
            "path": dg.MetadataValue.path(str(files.current)),
            "retrieval": report["models"]["retrieval"]["model"],
            "reranker": f"{rerank['system']} seed {rerank['seed']}" if rerank else "none",
            "data_version": report["data_version"],
            **models_used(mlflow, profile, context.partition_key, report["models"],
                          context.log.warning),
            "retrieval_users_per_s": round(report["users"] / max(report["retrieval_seconds"],
                                                                  1e-9), 1),
            "rerank_users_per_s": round(report["reranked_users"] / report["rerank_seconds"], 3)
            if report["reranked_users"] else 0.0,
            "sample": table(["user", "recent history (oldest first)", "recommended (best first)"],
                            sample, max_cell=400)})
