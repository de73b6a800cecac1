"""`make demo`: materialise the whole asset graph into the DAGSTER_HOME instance, then print
the summary (rendered by cprec_core.evaluation.results, where `make results` renders its
tables; this module only orchestrates) and a stage-time table. Runs are recorded like UI
runs, so `make ui` shows them with their metadata. Each stage runs only what is missing or
stale (cprec_assets.freshness): a second demo with nothing changed runs nothing, and a
killed one resumes where it stopped.

    python -m cprec_assets.demo            # profile from CPREC_PROFILE / CPREC_CONFIG
    python -m cprec_assets.demo --rerun    # every stage again, up to date or not

Stages can run on their own, so a machine with room for several trainings (a GPU) can run
them side by side (pools permitting, see dagster_home/; scripts/study_side_by_side.sh does this):

    python -m cprec_assets.demo --stage corpus
    python -m cprec_assets.demo --stage cpt --variant wsa &        # one process per variant
    python -m cprec_assets.demo --stage embeddings                 # LLM item embeddings
    python -m cprec_assets.demo --stage domain --domain crime &    # all of one domain, or:
    python -m cprec_assets.demo --stage sasrec --domain crime      #   its data and SASRec,
    python -m cprec_assets.demo --stage sft --domain crime --system llara &  # each SFT system,
    python -m cprec_assets.demo --stage dpo --domain crime         #   DPO after its SFT,
    python -m cprec_assets.demo --stage evaluation --domain crime  #   then its evaluation
    python -m cprec_assets.demo --stage evaluation --system cprec_dpo  # one LLM system re-scored
    python -m cprec_assets.demo --stage recommend --domain crime   #   full ranking, top-k export
    python -m cprec_assets.demo --stage summary
    python -m cprec_assets.demo --stage scaling                    # the CPT scaling curve
"""

import argparse
import os
import socket
import sys
import time
import warnings

import dagster as dg

from cprec_assets.definitions import defs
from cprec_assets.freshness import observe_sources, stale_or_missing
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_core import tracking
from cprec_core.config import Profile
from cprec_core.evaluation.evaluate import llm_domain, planned_llm_systems
from cprec_core.evaluation import results
from cprec_core.reporting import md_table
from cprec_core.systems import cpt_variant, embedding_asset, system

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
EVERYTHING = [*defs.assets, *defs.asset_checks]
SOURCES = {key for key in defs.resolve_asset_graph().get_all_asset_keys()
           if defs.resolve_asset_graph().get(key).is_external}
TIMES: list[tuple[str, float, str]] = []  # (stage, seconds, the assets it ran)
RERUN = False  # --rerun: every selected asset, up to date or not
PID_TAG, HOST_TAG = "cprec/pid", "cprec/host"  # the process that runs a demo run, and where


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed, and free the pool slots of, this command's runs on this host whose
    process is gone (killed by SIGKILL or the OOM killer). Nothing else ends such a run: it
    runs in-process, with no launcher or daemon to watch it, so it stays STARTED and keeps
    its claim on a pool slot, and every later step of that pool waits for the slot forever.
    A pid in use by another process counts as alive (nothing is released)."""
    runs = instance.get_runs(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
        tags={HOST_TAG: socket.gethostname()}))
    released = []
    for dead in runs:
        pid = dead.tags.get(PID_TAG, "")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        instance.report_run_failed(dead, f"its process {pid} ended without finishing the run")
        instance.event_log_storage.free_concurrency_slots_for_run(dead.run_id)
        released.append(dead.run_id)
        print(f"run {dead.run_id[:8]}: its process {pid} is gone; marked failed and its pool"
              " slots freed", flush=True)
    return released


def run(label: str, selection, instance: dg.DagsterInstance, partition_key: str | None = None,
        ops: dict | None = None, only_stale: bool = True):
    """Materialise ``selection`` (of ``partition_key``) as one run, or with ``only_stale`` just
    what is missing or stale in it and what follows from that (cprec_assets.freshness); the
    time goes into the stage-time table."""
    started = time.perf_counter()
    keys = sorted((key for key in selection.resolve(EVERYTHING) if key not in SOURCES),
                  key=lambda key: key.to_user_string())  # a set: ordered for the table
    if only_stale and not RERUN:
        keys = stale_or_missing(defs, instance, keys, partition_key)
        if not keys:
            TIMES.append((label, time.perf_counter() - started, "up to date"))
            print(f"{label}: up to date", flush=True)
            return
    result = dg.materialize(EVERYTHING, selection=keys, instance=instance,
                            resources=defs.resources, partition_key=partition_key,
                            run_config={**QUIET, "ops": ops or {}}, raise_on_error=False,
                            tags={"source": "make demo", PID_TAG: str(os.getpid()),
                                  HOST_TAG: socket.gethostname()})
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        sys.exit(f"{label} failed at {failed}; see `make ui` -> Runs -> {result.run_id}")
    checks = result.get_asset_check_evaluations()
    failed = [c for c in checks if not c.passed]
    seconds = time.perf_counter() - started
    TIMES.append((label, seconds, ", ".join(k.to_user_string() for k in keys)))
    print(f"{label}: ok in {seconds:.1f} s (run {result.run_id[:8]},"
          f" {len(checks) - len(failed)}/{len(checks)} checks passed)", flush=True)
    for check in failed:
        if check.severity == dg.AssetCheckSeverity.WARN:
            print(f"  warning: check {check.check_name} did not pass; see `make ui`", flush=True)
    errors = [c.check_name for c in failed if c.severity != dg.AssetCheckSeverity.WARN]
    if errors:
        sys.exit(f"{label}: checks failed: {errors}")


def stage_times() -> str:
    """What each run of this command took (the assets it ran), as a table: where the
    next slowdown shows."""
    total = sum(seconds for _, seconds, _ in TIMES)
    rows = [(label, f"{seconds:.1f}", ran) for label, seconds, ran in TIMES]
    return md_table(["stage", "seconds", "ran"], [*rows, ("total", f"{total:.1f}", "")])


STAGES = ("all", "corpus", "cpt", "embeddings", "domain", "sasrec", "sft", "dpo", "evaluation",
          "recommend", "summary", "scaling")
PER_DOMAIN = ("sasrec", "sft", "dpo", "evaluation", "recommend")


def _chosen(flag: str, given: list[str] | None, known) -> list[str]:
    """``given`` (all of ``known`` when absent), every name checked against ``known``."""
    unknown = sorted(set(given or ()) - set(known))
    if unknown:
        sys.exit(f"{flag} {unknown}: not one of {list(known)}")
    return list(given or known)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="domain = sasrec + sft + evaluation of each domain in turn")
    parser.add_argument("--variant", action="append", help="CPT variant(s) of --stage cpt")
    parser.add_argument("--domain", action="append", help="domain partition(s) of the domain stages")
    parser.add_argument("--system", action="append",
                        help="SFT system(s) of --stage sft; LLM system(s) --stage evaluation"
                             " scores (the others' rows stay); next-item system(s) of --stage"
                             " sasrec")
    parser.add_argument("--rerun", action="store_true",
                        help="materialise every selected asset, not only the missing or stale")
    return parser.parse_args(argv)


def run_shared_stages(args: argparse.Namespace, profile: Profile,
                      instance: dg.DagsterInstance) -> None:
    """The stages every domain reads: the corpus, each CPT variant, the item embeddings."""
    stage = args.stage
    if stage in ("all", "corpus"):
        corpus = dg.AssetSelection.groups("corpus") - dg.AssetSelection.assets("domain_users")
        run("corpus", corpus, instance)
    if stage in ("all", "cpt"):
        for variant in _chosen("--variant", args.variant, profile.cpt.variants):
            run(f"cpt[{variant}]", dg.AssetSelection.assets(cpt_variant(variant).asset), instance)
    if stage in ("all", "embeddings"):
        for source in profile.item_text.sources():
            run(f"item embeddings[{source}]",
                dg.AssetSelection.assets(embedding_asset(source)), instance)


def run_domain_stages(args: argparse.Namespace, profile: Profile,
                      instance: dg.DagsterInstance) -> None:
    """The per-domain stages ``args.stage`` names, one domain partition after the other."""
    parts = PER_DOMAIN if args.stage in ("all", "domain") else (args.stage,)
    if not set(parts) & set(PER_DOMAIN):
        return
    keys = instance.get_dynamic_partitions(domain_partitions.name)
    if not keys:
        sys.exit("no domain partitions yet: run --stage corpus first")
    # --system names the SFT systems to train, the LLM systems to score, or (--stage sasrec)
    # the next-item systems to train
    scoring_only = args.stage == "evaluation" and args.system
    next_item = ["sasrec", "gru4rec", *profile.item_text.systems]
    if args.stage == "sasrec":
        next_item = _chosen("--system", args.system, next_item)
    systems = [] if scoring_only or args.stage == "sasrec" else _chosen(
        "--system", args.system, profile.sft.systems)
    scored = _chosen("--system", args.system, dict.fromkeys(
        name for name, _ in planned_llm_systems(profile))) if scoring_only else []
    for key in _chosen("--domain", args.domain, keys):
        run_domain(key, parts, systems, scored, profile, instance, next_item)


def run_domain(key: str, parts, systems: list[str], scored: list[str], profile: Profile,
               instance: dg.DagsterInstance, next_item: list[str] | None = None) -> None:
    """One domain's ``parts``: its data and next-item models (``next_item``, default all),
    the SFT systems ``systems``, DPO, the evaluation (of the LLM systems ``scored``, all when
    empty), recommendations."""
    if "sasrec" in parts:
        # the data first, on its own: a re-built domain with the same data version leaves
        # the models fresh
        run(f"domain[{key}]", dg.AssetSelection.assets("domain_users", "candidate_sets"),
            instance, key)
        next_item = next_item or ["sasrec", "gru4rec", *profile.item_text.systems]
        run(f"next-item[{key}]", dg.AssetSelection.assets(
            *(system(n).asset for n in next_item)), instance, key)
    if not llm_domain(profile, key):  # sft.domains: the LLM systems train elsewhere
        systems, parts = [], [p for p in parts if p not in ("sft", "dpo")]
    if "sft" in parts:
        for name in systems:
            asset = system(name).asset
            run(f"{asset}[{key}]", dg.AssetSelection.assets(asset), instance, key)
    if "dpo" in parts:
        for name in profile.dpo.systems:
            entry = system(name)
            for asset in (entry.pairs_asset, entry.asset):
                run(f"{asset}[{key}]", dg.AssetSelection.assets(asset), instance, key)
    if "evaluation" in parts:
        run(f"evaluation[{key}]", dg.AssetSelection.assets("evaluation"), instance, key,
            {"evaluation": {"config": {"systems": scored}}}, only_stale=not scored)
    if "recommend" in parts:
        run(f"recommend[{key}]", dg.AssetSelection.assets(
            "full_ranking", "recommendations"), instance, key)


def print_summary(cprec: ProfileResource, instance: dg.DagsterInstance) -> None:
    """The leaderboard rebuilt, then the report's tables, rendered where `make results`
    renders them (cprec_core.evaluation.results.summary)."""
    run("leaderboard", dg.AssetSelection.assets("leaderboard"), instance)
    with cprec.connect() as con:
        print()
        print(results.summary(con, cprec.profile,
                              instance.get_dynamic_partitions(domain_partitions.name)))


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    instance = dg.DagsterInstance.get()
    release_dead_runs(instance)
    global RERUN
    RERUN = args.rerun
    error = observe_sources(defs, instance)
    if error:
        sys.exit(f"observing the input files (interaction_files) failed: {error}")
    cprec = defs.resources["cprec"]
    if args.stage == "scaling":  # by hand (make study-text-scaling): tens of minutes
        run("cpt_scaling_curve", dg.AssetSelection.assets("cpt_scaling_curve"), instance)
        return
    run_shared_stages(args, cprec.profile, instance)
    run_domain_stages(args, cprec.profile, instance)
    if args.stage in ("all", "summary"):
        print_summary(cprec, instance)
    print(f"\nStage times (profile {cprec.profile.name}):\n{stage_times()}", flush=True)
    print(tracking.describe(defs.resources["mlflow"].profile(cprec.profile)), flush=True)


if __name__ == "__main__":
    main()
