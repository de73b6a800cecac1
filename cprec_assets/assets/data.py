"""Data stage: raw logs -> clean split interactions -> behaviour sequences -> CPT corpus.

Each asset is one call into cprec_core plus metadata; the tables live in the profile's
DuckDB file, so every asset writes through the ``duckdb_write`` pool.
"""


import dataclasses
import hashlib
import json

import dagster as dg

from cprec_assets.assets.landing import landed_interactions
from cprec_assets.automation import DATA
from cprec_assets.partitions import DUCKDB_POOL, domain_partitions
from cprec_assets.resources import CPRecConfig
from cprec_core.data.corpus import build_cpt_corpus, corpus_texts, export_snapshot
from cprec_core.data.domain_users import build_domain_users, domain_data_version
from cprec_core.data.interactions import build_interactions
from cprec_core.models.tokenizer import load_tokenizer, tokenizer_fingerprint
from cprec_core.data.raw import load_raw_interactions, raw_data_version
from cprec_core.reporting import corpus_summary, md_table, query_table
from cprec_core.data.sequences import build_domain_sequences, build_mixed_sequences

GROUP = "corpus"


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL, deps=[landed_interactions],
          code_version="1", automation_condition=DATA)
def raw_interactions(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """Every input row of the configured sources and of the landed files, with source file and
    line; rows that cannot be used are in ``rejected_rows`` with the field and the reason."""
    profile = cprec.load()
    with cprec.connect() as con:
        report = load_raw_interactions(con, profile.data.sources, profile.cache_dir)
        preview = query_table(con, "SELECT * FROM raw_interactions LIMIT 10")
        rejected = query_table(con, "SELECT * FROM rejected_rows ORDER BY source_file, line LIMIT 20")
        version = raw_data_version(con)
    files = [(f["source_file"], f["role"], f["format"], f["rows_read"], f["rows_loaded"],
              f["rows_rejected"]) for f in report.files]
    context.log.info(f"read {len(files)} files; {report.total('rows_loaded')} interactions loaded")
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dagster/row_count": report.total("rows_loaded"),
        "rows_read": report.total("rows_read"),
        "rows_rejected": report.total("rows_rejected"),
        "item_rows_rejected": report.total("rows_rejected", role="items"),
        "files": dg.MetadataValue.md(md_table(
            ["file", "role", "format", "read", "loaded", "rejected"], files)),
        "rejection_reasons": dg.MetadataValue.md(md_table(
            ["field: reason", "rows"], list(report.reasons.items()) or [("(none)", 0)])),
        "rejected_rows": dg.MetadataValue.md(rejected),
        "preview": dg.MetadataValue.md(preview),
        "database": dg.MetadataValue.path(str(profile.database)),
        "raw_data_version": version,
    })


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL, deps=[raw_interactions],
          code_version="1", automation_condition=DATA)
def interactions(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """Deduplicated, per-domain k-core filtered, re-indexed, split leave-one-out per user and
    domain; the configured target domains, and new domains of landed files once they qualify
    as targets, become ``domain`` partitions."""
    profile = cprec.load()
    with cprec.connect() as con:
        report = build_interactions(con, profile.data)
        domains = query_table(con, "SELECT * FROM domains ORDER BY role, interactions DESC")
        targets = [r[0] for r in con.execute(
            "SELECT slug FROM domains WHERE role = 'target' ORDER BY slug").fetchall()]
        preview = query_table(con, "SELECT * FROM interactions LIMIT 10")
        # a function of the raw files and the data settings
        version = hashlib.sha256(json.dumps([raw_data_version(con), dataclasses.asdict(
            profile.data)], default=str).encode()).hexdigest()[:16]
    new = [k for k in targets if not context.instance.has_dynamic_partition(domain_partitions.name, k)]
    if new:
        context.instance.add_dynamic_partitions(domain_partitions.name, new)
        context.log.info(f"added domain partitions {new}")
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dagster/row_count": report.kept_rows,
        "raw_rows": report.raw_rows,
        "users": report.users,
        "items": report.items,
        "kcore_rounds": report.kcore_rounds,
        "filtered": dg.MetadataValue.md(md_table(
            ["reason", "rows"], list(report.filtered.items()) or [("(none)", 0)])),
        "domains": dg.MetadataValue.md(domains),
        "target_partitions": ", ".join(targets),
        "new_domains_from_landing": dg.MetadataValue.md(md_table(
            ["domain", "role"], list(report.landed_domains.items()) or [("(none)", "")])),
        "preview": dg.MetadataValue.md(preview),
    })


def _sequence_metadata(report, con, table: str) -> dict:
    return {
        "dagster/row_count": report.sequences,
        "users": report.users,
        "items_total": report.items_total,
        "mean_length": report.mean_len,
        "windows_dropped": report.dropped_windows,
        "preview": dg.MetadataValue.md(query_table(con, f"SELECT * FROM {table} LIMIT 10")),
    }


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL, deps=[interactions],
          code_version="1", automation_condition=DATA)
def domain_sequences(cprec: CPRecConfig) -> dg.MaterializeResult:
    """Per user and source domain, the train items in time order, in windows of at most
    ``corpus.max_items``."""
    profile = cprec.load()
    with cprec.connect() as con:
        report = build_domain_sequences(con, profile.corpus)
        meta = _sequence_metadata(report, con, "domain_sequences")
        meta["per_domain"] = dg.MetadataValue.md(query_table(con, """
            SELECT domain, count(*) AS sequences, sum(n_items) AS items,
                   round(avg(n_items), 1) AS mean_len
            FROM domain_sequences GROUP BY domain ORDER BY items DESC"""))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL, deps=[interactions],
          code_version="1", automation_condition=DATA)
def mixed_sequences(cprec: CPRecConfig) -> dg.MaterializeResult:
    """Per user, the train items of all source domains merged in time order (>= 2 domains)."""
    profile = cprec.load()
    with cprec.connect() as con:
        report = build_mixed_sequences(con, profile.corpus)
        meta = _sequence_metadata(report, con, "mixed_sequences")
        meta["domains_per_sequence"] = dg.MetadataValue.md(query_table(con, """
            SELECT n_domains, count(*) AS sequences FROM mixed_sequences GROUP BY ALL ORDER BY 1"""))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL,
          deps=[domain_sequences, mixed_sequences], code_version="1", automation_condition=DATA)
def cpt_corpus(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """Both sequence kinds rendered with the unified prompt and tokenised for the model."""
    profile = cprec.load()
    with cprec.connect() as con:
        texts = None
        if profile.model.name == "tiny-random":  # its tokenizer is trained on the corpus
            texts = [row[5] for row in corpus_texts(con, profile.corpus)]
        tokenizer = load_tokenizer(profile.model.name, profile.cache_dir, texts,
                                   profile.model.trust_remote_code)
        report = build_cpt_corpus(con, profile.corpus, tokenizer, profile.model.name)
        snapshot = export_snapshot(con, profile.corpus_dir, tokenizer)
        summary = corpus_summary(con)
        sample = con.execute("SELECT kind, text FROM cpt_corpus WHERE doc_id IN "
                             "(0, (SELECT min(doc_id) FROM cpt_corpus WHERE kind = 'mixed'))"
                             ).fetchall()
    context.log.info(f"corpus: {report.documents} documents, {report.tokens} tokens")
    return dg.MaterializeResult(data_version=dg.DataVersion(snapshot["snapshot_sha256"][:16]), metadata={
        "dagster/row_count": sum(report.documents.values()),
        "documents_domain": report.documents.get("domain", 0),
        "documents_mixed": report.documents.get("mixed", 0),
        "tokens_domain": report.tokens.get("domain", 0),
        "tokens_mixed": report.tokens.get("mixed", 0),
        "tokens_total": report.total_tokens,
        "max_document_tokens": report.max_tokens,
        "tokenizer": profile.model.name,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "snapshot": dg.MetadataValue.path(str(profile.corpus_dir)),
        "snapshot_sha256": snapshot["snapshot_sha256"],
        "summary": dg.MetadataValue.md(summary),
        "sample_documents": dg.MetadataValue.md(md_table(["kind", "text"], sample, max_cell=2000)),
    })


@dg.asset(group_name=GROUP, kinds={"duckdb"}, pool=DUCKDB_POOL, deps=[interactions],
          partitions_def=domain_partitions, code_version="1", automation_condition=DATA)
def domain_users(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """One target domain's users: train history, validation and test item, activity tercile.
    What SASRec, SFT and evaluation of that domain read."""
    with cprec.connect() as con:
        report = build_domain_users(con, context.partition_key)
        preview = query_table(con, "SELECT * FROM domain_users WHERE domain = ? LIMIT 10",
                              [report.domain])
        version = domain_data_version(con, report.domain)
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dagster/row_count": report.users,
        "domain": report.domain,
        "data_version": version,
        "items": report.items,
        "train_interactions": report.train,
        "density": report.density,
        "history_tercile_cuts": f"{report.tercile_cuts[0]:g} / {report.tercile_cuts[1]:g}",
        "activity": dg.MetadataValue.md(md_table(["activity", "users"],
                                                 sorted(report.activity.items()))),
        "preview": dg.MetadataValue.md(preview),
    })
