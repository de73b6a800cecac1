#!/usr/bin/env bash
# The study on one CUDA machine (`make study-gpu`): the profile's stages through the Dagster
# graph, with the CPT variants side by side and then the target domains side by side. With a
# 135M model one training leaves a large GPU mostly idle, so process start-up, not FLOPs,
# sets the wall time. The instance must let trainings overlap: in $DAGSTER_HOME/dagster.yaml
# set concurrency.pools.default_limit to 4 or more (one machine, one GPU, enough memory).
#
#   CPREC_PROFILE=study-gpu RESULTS_OUT=docs/RESULTS-gpu.md scripts/study_gpu.sh
set -euo pipefail
PY=${PY:-python3}
export CPREC_PROFILE=${CPREC_PROFILE:-study-gpu}
RESULTS_OUT=${RESULTS_OUT:-docs/RESULTS-gpu.md}
LOGS=${LOGS:-data/logs/$CPREC_PROFILE}
mkdir -p "$LOGS"

# every stage in the background, its log in $LOGS; fails if any of them failed
side_by_side() {
    local stage=$1 flag=$2; shift 2
    local pids=() name
    for name in "$@"; do
        "$PY" -m cprec_assets.demo --stage "$stage" "$flag" "$name" >"$LOGS/$stage-$name.log" 2>&1 &
        pids+=($!)
    done
    local failed=0 i=0
    for name in "$@"; do
        if wait "${pids[$i]}"; then grep -h " ok in " "$LOGS/$stage-$name.log" || true
        else echo "$stage $name FAILED: see $LOGS/$stage-$name.log"; tail -20 "$LOGS/$stage-$name.log"; failed=1; fi
        i=$((i + 1))
    done
    return $failed
}

started=$(date +%s)
"$PY" -m cprec_assets.demo --stage corpus
# the base model's cached checkpoint once, before the trainers start side by side
variants=$("$PY" -c 'from cprec_assets.definitions import defs
from cprec_core.models.loader import model_path
profile = defs.resources["cprec"].load()
if profile.model.name != "tiny-random":
    model_path(profile.model.name, profile.cache_dir)
print(" ".join(profile.cpt.variants))')
side_by_side cpt --variant $variants
domains=$("$PY" -c 'import dagster as dg
from cprec_assets.partitions import domain_partitions
print(" ".join(dg.DagsterInstance.get().get_dynamic_partitions(domain_partitions.name)))')
side_by_side domain --domain $domains
"$PY" -m cprec_assets.demo --stage summary
echo "study: $(( $(date +%s) - started )) s wall"
if [ -n "${CPREC_CONFIG:-}" ]; then source=(--config "$CPREC_CONFIG"); else source=(--profile "$CPREC_PROFILE"); fi
"$PY" -m cprec_core.results "${source[@]}" --out "$RESULTS_OUT"
