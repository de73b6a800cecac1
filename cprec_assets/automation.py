"""When assets re-materialise by themselves (Dagster declarative automation).

* Data assets (``DATA``): eager. A new materialisation upstream (new landed files, a rebuilt
  ``raw_interactions``) re-materialises them, and a new ``domain`` partition is filled as soon
  as it appears; never while an upstream asset is missing or running, nor after a failed
  blocking check upstream.
* Training assets (``TRAIN``: ``cpt_adapter``, ``sasrec``, ``gru4rec``, ``sft_adapter``, ``llara_adapter``)
  and ``evaluation`` (``EVALUATE``): re-trained on the cron schedule ``RETRAIN_CRON``, once
  every upstream asset has been updated since the last cron tick (new data arrived), so a
  busy landing folder does not re-train on every file; a partition that is missing (a new
  target domain) is trained at once. Ablation variants are not automated: launch them by hand
  or as a backfill.

* ``full_ranking`` and ``recommendations`` (``RECOMMEND``): eager, as soon as a model they
  read has been re-trained (or the evaluation re-picked its fusion), so the shipped
  recommendations follow the models without waiting for a schedule.

Nothing runs until the automation sensor ``cprec_automation`` is switched on (UI: Automation
-> cprec_automation -> toggle, or ``dagster sensor start cprec_automation``); see
docs/OPERATIONS.md.
"""

import dagster as dg

from cprec_core.systems import automated_assets, evaluation_inputs

AC = dg.AutomationCondition

RETRAIN_CRON = "0 3 * * 6"  # Saturdays 03:00 UTC

_checks_passed = AC.all_deps_blocking_checks_passed()

DATA = (AC.eager() & _checks_passed).with_label("eager, upstream blocking checks passed")

TRAIN = (
    (AC.on_cron(RETRAIN_CRON) | AC.on_missing())
    & _checks_passed
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label(f"on_cron({RETRAIN_CRON}) or missing, upstream blocking checks passed")

# The evaluation reads every registered system's weights (its upstream, for lineage), but
# waits only for the automated ones: an ablation adapter no profile trains must not hold it.
EVALUATE = TRAIN.ignore(dg.AssetSelection.assets(
    *(a for a in evaluation_inputs() if a not in automated_assets())))

# The product stage (full_ranking, recommendations) follows its models: re-materialised as
# soon as any model it reads (or the evaluation's fusion choice) is updated, once none is
# missing or running; the unautomated ablation adapters are not waited for.
RECOMMEND = (AC.eager() & _checks_passed).ignore(dg.AssetSelection.assets(
    *(a for a in evaluation_inputs() if a not in automated_assets()))).with_label(
    "eager on model updates, upstream blocking checks passed")

# Runs started by the automation sensor: stopped by run monitoring after this long.
MAX_RUNTIME_SECONDS = 6 * 3600

automation_sensor = dg.AutomationConditionSensorDefinition(
    "cprec_automation",
    target=dg.AssetSelection.all(),
    run_tags={"dagster/max_runtime": str(MAX_RUNTIME_SECONDS), "cprec/trigger": "automation"},
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Evaluates the assets' automation conditions (cprec_assets/automation.py).",
)
