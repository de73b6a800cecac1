#!/usr/bin/env bash
# The study on one CUDA machine (`make study-gpu`): the profile's stages through the Dagster
# graph, each stage's jobs side by side: the CPT variants together with each domain's data and
# SASRec, then every (domain, SFT system), then each domain's evaluation. With a 135M model one
# training leaves a large GPU mostly idle, so process start-up, not FLOPs, sets the wall
# time. The instance must let these overlap: in $DAGSTER_HOME/dagster.yaml set
# concurrency.pools.default_limit to 10 or more (one machine, one GPU with room for them).
#
#   CPREC_PROFILE=study-gpu RESULTS_OUT=docs/RESULTS-gpu.md scripts/study_gpu.sh
#   STUDY_PART=train scripts/study_gpu.sh; STUDY_PART=evaluate scripts/study_gpu.sh  # two calls
set -euo pipefail
PY=${PY:-python3}
export CPREC_PROFILE=${CPREC_PROFILE:-study-gpu}
RESULTS_OUT=${RESULTS_OUT:-docs/RESULTS-gpu.md}
LOGS=${LOGS:-data/logs/$CPREC_PROFILE}
mkdir -p "$LOGS"

# side_by_side JOB...: `demo --stage JOB` for every JOB at once (a JOB is a stage and its
# flags, e.g. "sft --domain=crime --system=llara"), a log each; fails if any of them failed
side_by_side() {
    local pids=() logs=() job log i failed=0
    # the CPU cores split between the jobs: SASRec trains in the Dagster process, and two
    # processes of all-core OpenMP threads each ran it 10x slower than one (204 s, not 19 s)
    local threads=$(( $(nproc) / $# )); (( threads >= 1 )) || threads=1
    for job in "$@"; do
        log="$LOGS/$(echo "$job" | sed 's/ --\([a-z]*\)=/-/g; s/ //g').log"  # sft-crime-llara.log
        # shellcheck disable=SC2086  # a job is a stage and its flags
        OMP_NUM_THREADS=$threads CPREC_NUM_THREADS=$threads \
            "$PY" -m cprec_assets.demo --stage $job >"$log" 2>&1 &
        pids+=($!)
        logs+=("$log")
    done
    for i in "${!pids[@]}"; do
        if wait "${pids[$i]}"; then grep -h " ok in " "${logs[$i]}" || true
        else echo "FAILED: ${logs[$i]}"; tail -20 "${logs[$i]}"; failed=1; fi
    done
    return $failed
}

# STUDY_PART=train (corpus, CPT, SASRec, SFT) or evaluate (evaluation, leaderboard, results):
# one part per call where a call's time is capped (a lent GPU machine); default: both
PART=${STUDY_PART:-all}
case $PART in all|train|evaluate) ;; *) echo "STUDY_PART must be all, train or evaluate"; exit 2;; esac
started=$(date +%s)
if [ "$PART" != evaluate ]; then "$PY" -m cprec_assets.demo --stage corpus; fi
# one look-up process (each costs seconds of imports): the CPT variants, SFT systems and
# domains, and the base model's cached checkpoint, built once before trainers start side by
# side; a failing look-up (a bad config, say) stops the script here with its error (set -e)
lookup=$("$PY" -c 'import dagster as dg
from cprec_assets.definitions import defs
from cprec_assets.partitions import domain_partitions
from cprec_core.models.loader import model_path
profile = defs.resources["cprec"].load()
if profile.model.name != "tiny-random":
    model_path(profile.model.name, profile.cache_dir)
print(" ".join(profile.cpt.variants))
print(" ".join(profile.sft.systems))
print(" ".join(dg.DagsterInstance.get().get_dynamic_partitions(domain_partitions.name)))')
{ read -r -a variants; read -r -a systems; read -r -a domains; } <<<"$lookup"
if [ ${#domains[@]} -eq 0 ]; then echo "no domains found: run the corpus stage first"; exit 1; fi
if [ "$PART" != evaluate ]; then
    # the CPT variants and each domain's data and SASRec (CPU) need nothing of each other
    side_by_side "${variants[@]/#/cpt --variant=}" "${domains[@]/#/sasrec --domain=}"
    pairs=()
    for d in "${domains[@]}"; do for s in "${systems[@]}"; do pairs+=("sft --domain=$d --system=$s"); done; done
    side_by_side "${pairs[@]}"
fi
if [ "$PART" = train ]; then echo "study training: $(( $(date +%s) - started )) s wall"; exit 0; fi
side_by_side "${domains[@]/#/evaluation --domain=}"
"$PY" -m cprec_assets.demo --stage summary
echo "study: $(( $(date +%s) - started )) s wall"
if [ -n "${CPREC_CONFIG:-}" ]; then source=(--config "$CPREC_CONFIG"); else source=(--profile "$CPREC_PROFILE"); fi
"$PY" -m cprec_core.results "${source[@]}" --out "$RESULTS_OUT"
