#!/usr/bin/env bash
# The study through the Dagster graph, stage by stage, each stage's jobs side by side:
# the CPT variants together with each domain's data and SASRec, then every (domain, SFT
# system), then each domain's evaluation; then the leaderboard and the results file.
#
# On one CUDA GPU (`make study-gpu`) all of a stage's jobs run at once: a 135M model leaves
# the GPU mostly idle, so process start-up, not FLOPs, sets the wall time. MAX_JOBS bounds
# that where memory or cores are short; on the 2-core CPU two 1-thread lanes were no faster
# than `make study`'s one process over a whole study (benchmarks/README.md, "Two lanes on 2
# cores").
#
#   MAX_JOBS=N       at most N jobs at once (default: all of a stage); each gets cores/N threads
#   POOL_LIMIT=N     the instance's `train` and `duckdb_write` pools raised to N for the run
#                    (restored at exit), so N trainings or evaluations can hold a slot at once
#   STUDY_PART=train|evaluate   one part per call where a call's time is capped (a lent GPU)
#
#   CPREC_PROFILE=study-gpu POOL_LIMIT=16 RESULTS_OUT=docs/RESULTS-gpu.md scripts/study_side_by_side.sh
#   CPREC_PROFILE=study MAX_JOBS=2 POOL_LIMIT=2 RESULTS_OUT=docs/RESULTS.md scripts/study_side_by_side.sh
set -euo pipefail
PY=${PY:-python3}
export CPREC_PROFILE=${CPREC_PROFILE:-study-gpu}
RESULTS_OUT=${RESULTS_OUT:-docs/RESULTS-gpu.md}
LOGS=${LOGS:-data/logs/$CPREC_PROFILE}
mkdir -p "$LOGS"

# side_by_side JOB...: `demo --stage JOB` for every JOB (a JOB is a stage and its flags, e.g.
# "sft --domain=crime --system=llara"), at most MAX_JOBS at once (default: all), a log each;
# fails if any of them failed
side_by_side() {
    local logs=() job log failed=0
    local limit=${MAX_JOBS:-$#}; (( limit >= 1 && limit <= $# )) || limit=$#
    # the CPU cores split between the jobs: SASRec trains in the Dagster process, and two
    # processes of all-core OpenMP threads each ran it 10x slower than one (204 s, not 19 s)
    local threads=$(( $(nproc) / limit )); (( threads >= 1 )) || threads=1
    for job in "$@"; do
        while (( $(jobs -rp | wc -l) >= limit )); do sleep 1; done
        log="$LOGS/$(echo "$job" | sed 's/ --\([a-z]*\)=/-/g; s/ //g').log"  # sft-crime-llara.log
        rm -f "$log.rc"
        # shellcheck disable=SC2086  # a job is a stage and its flags
        ( OMP_NUM_THREADS=$threads CPREC_NUM_THREADS=$threads \
            "$PY" -m cprec_assets.demo --stage $job >"$log" 2>&1; echo $? >"$log.rc" ) &
        logs+=("$log")
    done
    wait
    for log in "${logs[@]}"; do
        if [ "$(cat "$log.rc" 2>/dev/null)" = 0 ]; then grep -h " ok in " "$log" || true
        else echo "FAILED: $log"; tail -20 "$log"; failed=1; fi
    done
    return $failed
}

# pools LIMIT: set the instance's training and DuckDB pools to LIMIT and print what they
# were ("pool=slots", or "pool=" where the pool had no limit set); pools POOL=SLOTS...
# (that output) puts them back
pools() {
    "$PY" - "$@" <<'PYEOF'
import sys, warnings
warnings.filterwarnings("ignore")
import dagster as dg
from cprec_assets.partitions import DUCKDB_POOL
from cprec_assets.assets.train import TRAIN_POOL
storage = dg.DagsterInstance.get().event_log_storage
if "=" in sys.argv[1]:  # restore
    for item in sys.argv[1:]:
        pool, _, slots = item.partition("=")
        if slots:
            storage.set_concurrency_slots(pool, int(slots))
        else:
            storage.delete_concurrency_limit(pool)
else:
    known = storage.get_concurrency_keys()
    for pool in (TRAIN_POOL, DUCKDB_POOL):
        before = storage.get_concurrency_info(pool).slot_count if pool in known else ""
        print(f"{pool}={before}", end=" ")
        storage.set_concurrency_slots(pool, int(sys.argv[1]))
PYEOF
}
for name in MAX_JOBS POOL_LIMIT; do
    value=${!name:-}
    if [ -n "$value" ] && ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "$name must be a whole number of at least 1, got '$value'" >&2
        exit 2
    fi
done
if [ -n "${POOL_LIMIT:-}" ]; then
    before=$(pools "$POOL_LIMIT")
    echo "pools raised to $POOL_LIMIT for this run (were: $before)"
    # shellcheck disable=SC2086  # one word per pool
    trap 'pools $before && echo "pools restored: $before"' EXIT
fi

# STUDY_PART=train (corpus, CPT, SASRec, SFT) or evaluate (evaluation, leaderboard, results);
# default: both
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
profile = defs.resources["cprec"].profile
if profile.model.name != "tiny-random":
    model_path(profile.model.name, profile.layout.cache_dir)
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
"$PY" -m cprec_core.evaluation.results "${source[@]}" --out "$RESULTS_OUT"
