"""Quality gates of the data stage. Blocking checks stop downstream assets in the same run:
a leak into the CPT corpus or an out-of-order sequence would poison every model after it."""


import dagster as dg

from cprec_assets.assets.data import (
    cpt_corpus,
    domain_sequences,
    interactions,
    mixed_sequences,
    raw_interactions,
)
from cprec_assets.partitions import DUCKDB_POOL
from cprec_assets.resources import ProfileResource
from cprec_core.data.corpus import corpus_leaks, document_balance
from cprec_core.data.interactions import leaks, row_balance
from cprec_core.data.raw import reconcile
from cprec_core.data.sequences import unordered_sequences
from cprec_core.reporting import md_table


@dg.asset_check(asset=raw_interactions, blocking=True, pool=DUCKDB_POOL)
def raw_rows_reconcile(cprec: ProfileResource) -> dg.AssetCheckResult:
    """Per file: rows read = rows loaded + rows rejected, and the tables hold exactly those."""
    with cprec.connect() as con:
        bad = reconcile(con)
    return dg.AssetCheckResult(passed=not bad, metadata={"files_not_reconciled": len(bad),
        "details": dg.MetadataValue.md(md_table(
            ["file", "read", "loaded", "rejected", "raw rows", "rejected rows"], bad)) if bad else ""})


@dg.asset_check(asset=interactions, blocking=True, pool=DUCKDB_POOL)
def interactions_reconcile(cprec: ProfileResource) -> dg.AssetCheckResult:
    """Raw rows = kept interactions + filtered rows (each with its reason)."""
    with cprec.connect() as con:
        raw, kept, filtered = row_balance(con)
    return dg.AssetCheckResult(passed=raw == kept + filtered,
                               metadata={"raw": raw, "kept": kept, "filtered": filtered})


@dg.asset_check(asset=interactions, blocking=True, pool=DUCKDB_POOL)
def leave_one_out_split(cprec: ProfileResource) -> dg.AssetCheckResult:
    """Every (user, domain) with >= 3 interactions has one valid and one test item, and they
    are its last two in time."""
    with cprec.connect() as con:
        bad = leaks(con)
    return dg.AssetCheckResult(passed=not bad, metadata={"bad_groups_shown": len(bad),
                                                         "examples": str(bad[:5])})


def _time_order_check(table: str, asset) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset, name=f"{table}_in_time_order", blocking=True, pool=DUCKDB_POOL,
                    description=f"Every row of {table} lists its items in time order.")
    def _check(cprec: ProfileResource) -> dg.AssetCheckResult:
        with cprec.connect() as con:
            bad = unordered_sequences(con, table)
        return dg.AssetCheckResult(passed=bad == 0, metadata={"unordered_sequences": bad})

    return _check


domain_sequences_in_time_order = _time_order_check("domain_sequences", domain_sequences)
mixed_sequences_in_time_order = _time_order_check("mixed_sequences", mixed_sequences)


@dg.asset_check(asset=cpt_corpus, blocking=True, pool=DUCKDB_POOL)
def no_leakage_into_corpus(cprec: ProfileResource) -> dg.AssetCheckResult:
    """No item of a target (or unused) domain and no valid/test interaction in the corpus."""
    with cprec.connect() as con:
        found = corpus_leaks(con)
    return dg.AssetCheckResult(passed=not any(found.values()), metadata=found)


@dg.asset_check(asset=cpt_corpus, blocking=True, pool=DUCKDB_POOL)
def corpus_reconciles(cprec: ProfileResource) -> dg.AssetCheckResult:
    """One document per sequence, and the stored token counts match the stored token ids."""
    with cprec.connect() as con:
        docs, seqs, bad_counts = document_balance(con)
    return dg.AssetCheckResult(passed=docs == seqs and bad_counts == 0,
                               metadata={"documents": docs, "sequences": seqs,
                                         "token_count_mismatches": bad_counts})


data_checks = [raw_rows_reconcile, interactions_reconcile, leave_one_out_split,
               domain_sequences_in_time_order, mixed_sequences_in_time_order,
               no_leakage_into_corpus, corpus_reconciles]
