"""The landing sensor: new files in the landing folder -> one run of ``corpus_job``.

Each tick scans the folder (cprec_core.data.landing.scan). A file is requested once it is complete
(a ``<file>.done`` marker, or the same size and modification time on two ticks and at least
``settle_seconds`` old) and only once per version: the cursor keeps the (size, mtime) stamp
it had when requested. The run loads the files into the landing tables (``landed_interactions``,
idempotent on the content's SHA-256) and rebuilds the unpartitioned data stage from them;
a new domain becomes a ``domain`` partition in that run when it qualifies as a target
(cprec_core.data.interactions). Per-domain assets and training follow through the automation
conditions (cprec_assets/automation.py).

Off until switched on: UI -> Automation -> ``landing_sensor``, or
``dagster sensor start landing_sensor``.
"""

import hashlib
import time

import dagster as dg

from cprec_assets.jobs import corpus_job
from cprec_assets.resources import ProfileResource
from cprec_core.data.landing import LandingCursor, scan


@dg.sensor(job=corpus_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="New files in the landing folder -> corpus_job (landed_interactions,"
                       " raw_interactions and the rest of the unpartitioned data stage).")
def landing_sensor(context: dg.SensorEvaluationContext, cprec: ProfileResource) -> dg.SensorResult:
    root = cprec.landing_root()
    cursor = LandingCursor.from_json(context.cursor)
    found = scan(root)
    ready = cursor.advance(found, time.time_ns(), cprec.settle_seconds)
    if not ready:
        waiting = len(cursor.seen)
        return dg.SensorResult(cursor=cursor.to_json(), skip_reason=(
            f"{root}: no new complete file ({waiting} waiting to settle,"
            f" {len(found.ignored)} ignored)"))
    files = [d.rel for d in ready]
    stamp = hashlib.sha256("\n".join(f"{d.rel}:{d.stamp}" for d in ready).encode()).hexdigest()
    context.log.info(f"requesting corpus_job for {len(files)} landed file(s): {files}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            run_key=f"landing-{stamp[:16]}",
            run_config={"ops": {"landed_interactions": {"config": {"files": files}}}},
            tags={"cprec/trigger": "landing", "cprec/landed_files": str(len(files))},
        )],
        cursor=cursor.to_json(),
    )
