"""Gathers the stage modules; nothing is defined here."""

import dagster as dg

from cprec_assets.assets import data, evaluate, landing, recommend
from cprec_assets.assets.collab import next_item_assets
from cprec_assets.assets.item_text import cpt_scaling_curve, embedding_assets
from cprec_assets.assets.train import (adapter_checks, cpt_assets, cpt_checks, dpo_assets,
                                       sft_assets)
from cprec_assets.automation import automation_sensor
from cprec_assets.checks import data_checks
from cprec_assets.jobs import corpus_job, cpt_job, domain_job
from cprec_assets.resources import build_resources
from cprec_assets.sensors import landing_sensor

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([landing, data, evaluate, recommend]), *cpt_assets,
            *embedding_assets, cpt_scaling_curve, *next_item_assets, *sft_assets, *dpo_assets],
    asset_checks=[*landing.landing_checks, *data_checks, *cpt_checks, *adapter_checks,
                  evaluate.twenty_distinct_candidates_with_the_target_once,
                  evaluate.every_system_saw_the_stored_candidate_sets,
                  evaluate.valid_ratio_above_floor, evaluate.dpo_keeps_the_answer_format],
    jobs=[corpus_job, cpt_job, domain_job],
    sensors=[landing_sensor, automation_sensor],
    resources=build_resources(),
)
