"""Data stage: raw logs -> clean split interactions -> behaviour sequences -> CPT corpus.

Each asset is one call into cprec_core plus metadata; the tables live in the profile's
DuckDB file, so every asset writes through the ``duckdb_write`` pool.
"""

import dagster as dg

from cprec_assets.assets.landing import interaction_files, landed_interactions
from cprec_assets.automation import DATA
from cprec_assets.metadata import markdown, table
from cprec_assets.partitions import DUCKDB_POOL, domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_assets.run_log import run_log
from cprec_assets.versions import code_version
from cprec_core.data.corpus import build_corpus_snapshot, sample_documents
from cprec_core.data.domain_users import (build_domain_users, domain_data_version,
                                          domain_users_preview)
from cprec_core.data.interactions import (build_interactions, interactions_previews,
                                          interactions_version, target_slugs)
from cprec_core.data.raw import load_raw_interactions, raw_data_version, raw_previews
from cprec_core.data.sequences import (build_domain_sequences, build_mixed_sequences,
                                       sequence_previews)
from cprec_core.reporting import corpus_summary

GROUP = "corpus"


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL,
          deps=[landed_interactions, interaction_files], code_version="1",
          automation_condition=DATA)
def raw_interactions(context: dg.AssetExecutionContext,
                     cprec: ProfileResource) -> dg.MaterializeResult:
    """Every input row of the configured sources and of the landed files, with source file and
    line; rows that cannot be used are in ``rejected_rows`` with the field and the reason."""
    profile = cprec.profile
    with cprec.connect() as con:
        report = load_raw_interactions(con, profile.data.sources, profile.layout.cache_dir,
                                       log=run_log(context))
        previews, version = raw_previews(con), raw_data_version(con)
    context.log.info(f"read {len(report.files)} files;"
                     f" {report.total('rows_loaded')} interactions loaded")
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dagster/row_count": report.total("rows_loaded"),
        "rows_read": report.total("rows_read"),
        "rows_rejected": report.total("rows_rejected"),
        "item_rows_rejected": report.total("rows_rejected", role="items"),
        "files": table(["file", "role", "format", "read", "loaded", "rejected"], [
            tuple(f[k] for k in ("source_file", "role", "format", "rows_read", "rows_loaded",
                                 "rows_rejected")) for f in report.files]),
        "rejection_reasons": table(["field: reason", "rows"], list(report.reasons.items())),
        **markdown(previews),
        "database": dg.MetadataValue.path(str(profile.layout.database)),
        "raw_data_version": version,
    })


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL, deps=[raw_interactions],
          code_version=code_version("1", "data"), automation_condition=DATA)
def interactions(context: dg.AssetExecutionContext,
                 cprec: ProfileResource) -> dg.MaterializeResult:
    """Deduplicated, per-domain k-core filtered, re-indexed, split leave-one-out per user and
    domain; the configured target domains, and new domains of landed files once they qualify
    as targets, become ``domain`` partitions."""
    with cprec.connect() as con:
        report = build_interactions(con, cprec.profile.data)
        previews, targets = interactions_previews(con), target_slugs(con)
        version = interactions_version(con, cprec.profile.data)
    new = [k for k in targets
           if not context.instance.has_dynamic_partition(domain_partitions.name, k)]
    if new:
        context.instance.add_dynamic_partitions(domain_partitions.name, new)
        context.log.info(f"added domain partitions {new}")
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dagster/row_count": report.kept_rows, "raw_rows": report.raw_rows,
        "users": report.users, "items": report.items, "kcore_rounds": report.kcore_rounds,
        "filtered": table(["reason", "rows"], list(report.filtered.items())),
        "target_partitions": ", ".join(targets),
        "new_domains_from_landing": table(["domain", "role"],
                                          list(report.landed_domains.items())),
        "merged_domain_spellings": table(["raw spelling", "loaded as"],
                                         list(report.merged_domains.items())),
        **markdown(previews),
    })


def _sequences(table_name: str, build, description: str) -> dg.AssetsDefinition:
    @dg.asset(name=table_name, group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL,
              deps=[interactions], code_version=code_version("1", "corpus"),
              automation_condition=DATA,
              description=description)
    def _asset(cprec: ProfileResource) -> dg.MaterializeResult:
        with cprec.connect() as con:
            report = build(con, cprec.profile.corpus)
            previews = sequence_previews(con, table_name)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": report.sequences, "users": report.users,
            "items_total": report.items_total, "mean_length": report.mean_len,
            "windows_dropped": report.dropped_windows, **markdown(previews)})

    return _asset


domain_sequences = _sequences(
    "domain_sequences", build_domain_sequences,
    "Per user and source domain, the train items in time order, in windows of at most"
    " ``corpus.max_items``.")
mixed_sequences = _sequences(
    "mixed_sequences", build_mixed_sequences,
    "Per user, the train items of all source domains merged in time order (>= 2 domains).")


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL,
          deps=[domain_sequences, mixed_sequences],
          code_version=code_version("1", "corpus", "model"), automation_condition=DATA)
def cpt_corpus(context: dg.AssetExecutionContext, cprec: ProfileResource) -> dg.MaterializeResult:
    """Both sequence kinds rendered with the unified prompt and tokenised for the model."""
    profile = cprec.profile
    with cprec.connect() as con:
        snapshot = build_corpus_snapshot(con, profile)
        summary, sample = corpus_summary(con), sample_documents(con)
    report = snapshot.report
    context.log.info(f"corpus: {report.documents} documents, {report.tokens} tokens")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(snapshot.snapshot_sha256[:16]), metadata={
            "dagster/row_count": sum(report.documents.values()),
            **{f"{what}_{kind}": getattr(report, what).get(kind, 0)
               for what in ("documents", "tokens") for kind in ("domain", "mixed", "target")},
            "tokens_total": report.total_tokens, "max_document_tokens": report.max_tokens,
            "tokenizer": profile.model.name,
            "tokenizer_fingerprint": snapshot.tokenizer_fingerprint,
            "snapshot": dg.MetadataValue.path(str(profile.layout.corpus_dir)),
            "snapshot_sha256": snapshot.snapshot_sha256,
            "summary": dg.MetadataValue.md(summary),
            "sample_documents": table(["kind", "text"], sample, max_cell=2000),
        })


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL, deps=[interactions],
          partitions_def=domain_partitions, code_version=code_version("1", "data"),
          automation_condition=DATA)
def domain_users(context: dg.AssetExecutionContext,
                 cprec: ProfileResource) -> dg.MaterializeResult:
    """One target domain's users: train history, validation and test item, activity tercile.
    What SASRec, SFT and evaluation of that domain read."""
    with cprec.connect() as con:
        report = build_domain_users(con, context.partition_key)
        preview = domain_users_preview(con, report.domain)
        version = domain_data_version(con, report.domain)
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dagster/row_count": report.users, "domain": report.domain, "data_version": version,
        "items": report.items, "train_interactions": report.train, "density": report.density,
        "history_tercile_cuts": f"{report.tercile_cuts[0]:g} / {report.tercile_cuts[1]:g}",
        "activity": table(["activity", "users"], sorted(report.activity.items())),
        "preview": dg.MetadataValue.md(preview),
    })
