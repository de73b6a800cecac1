"""`make demo`: materialise the whole asset graph into the DAGSTER_HOME instance, then print
the summary. Runs are recorded like UI runs, so `make ui` shows them with their metadata.

    python -m cprec_assets.demo            # profile from CPREC_PROFILE / CPREC_CONFIG
"""

import sys
import time

import dagster as dg

from cprec_assets.definitions import defs
from cprec_assets.partitions import domain_partitions
from cprec_core.reporting import corpus_summary


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run(job_name: str, instance: dg.DagsterInstance, partition_key: str | None = None) -> None:
    started = time.perf_counter()
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(instance=instance, partition_key=partition_key,
                                    raise_on_error=False, run_config=QUIET)
    label = f"{job_name}[{partition_key}]" if partition_key else job_name
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        sys.exit(f"{label} failed at {failed}; see `make ui` -> Runs -> {result.run_id}")
    checks = result.get_asset_check_evaluations()
    failed_checks = [c.check_name for c in checks if not c.passed]
    print(f"{label}: ok in {time.perf_counter() - started:.1f} s (run {result.run_id[:8]},"
          f" {len(checks) - len(failed_checks)}/{len(checks)} checks passed)")
    if failed_checks:
        sys.exit(f"{label}: checks failed: {failed_checks}")


def main() -> None:
    instance = dg.DagsterInstance.get()
    run("corpus_job", instance)
    for key in instance.get_dynamic_partitions(domain_partitions.name):
        run("domain_job", instance, key)
    cprec = defs.resources["cprec"]
    with cprec.connect() as con:
        print()
        print(corpus_summary(con))


if __name__ == "__main__":
    main()
