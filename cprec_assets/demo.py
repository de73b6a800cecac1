"""`make demo`: materialise the whole asset graph into the DAGSTER_HOME instance, then print
the summary. Runs are recorded like UI runs, so `make ui` shows them with their metadata.

    python -m cprec_assets.demo            # profile from CPREC_PROFILE / CPREC_CONFIG

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
import json
import os
import socket
import sys
import time
import warnings

import dagster as dg

from cprec_assets.definitions import defs
from cprec_assets.partitions import domain_partitions
from cprec_core.evaluation.evaluate import planned_llm_systems
from cprec_core.evaluation.leaderboard import leaderboard_markdown
from cprec_core.evaluation.results import DPO_TABLE_HEADER, dpo_table
from cprec_core.recommend.batch import recommendation_sample
from cprec_core.recommend.full_ranking import full_ranking_markdown
from cprec_core.reporting import corpus_summary, md_table
from cprec_core.systems import cpt_variant, embedding_asset, lora_init, system
from cprec_core.training.next_item import trained_next_item_models

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
EVERYTHING = [*defs.assets, *defs.asset_checks]
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
        ops: dict | None = None):
    started = time.perf_counter()
    result = dg.materialize(EVERYTHING, selection=selection, instance=instance,
                            resources=defs.resources, partition_key=partition_key,
                            run_config={**QUIET, "ops": ops or {}}, raise_on_error=False,
                            tags={"source": "make demo", PID_TAG: str(os.getpid()),
                                  HOST_TAG: socket.gethostname()})
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        sys.exit(f"{label} failed at {failed}; see `make ui` -> Runs -> {result.run_id}")
    checks = result.get_asset_check_evaluations()
    failed = [c for c in checks if not c.passed]
    print(f"{label}: ok in {time.perf_counter() - started:.1f} s (run {result.run_id[:8]},"
          f" {len(checks) - len(failed)}/{len(checks)} checks passed)", flush=True)
    for check in failed:
        if check.severity == dg.AssetCheckSeverity.WARN:
            print(f"  warning: check {check.check_name} did not pass; see `make ui`", flush=True)
    errors = [c.check_name for c in failed if c.severity != dg.AssetCheckSeverity.WARN]
    if errors:
        sys.exit(f"{label}: checks failed: {errors}")


STAGES = ("all", "corpus", "cpt", "embeddings", "domain", "sasrec", "sft", "dpo", "evaluation",
          "recommend", "summary", "scaling")
PER_DOMAIN = ("sasrec", "sft", "dpo", "evaluation", "recommend")


def _chosen(flag: str, given: list[str] | None, known) -> list[str]:
    """``given`` (all of ``known`` when absent), every name checked against ``known``."""
    unknown = sorted(set(given or ()) - set(known))
    if unknown:
        sys.exit(f"{flag} {unknown}: not one of {list(known)}")
    return list(given or known)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="domain = sasrec + sft + evaluation of each domain in turn")
    parser.add_argument("--variant", action="append", help="CPT variant(s) of --stage cpt")
    parser.add_argument("--domain", action="append", help="domain partition(s) of the domain stages")
    parser.add_argument("--system", action="append",
                        help="SFT system(s) of --stage sft; LLM system(s) --stage evaluation"
                             " scores (the others' rows stay)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    instance = dg.DagsterInstance.get()
    release_dead_runs(instance)
    cprec = defs.resources["cprec"]
    profile = cprec.profile
    layout = profile.layout
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
    if stage == "scaling":  # by hand (make study-text-scaling): tens of minutes
        run("cpt_scaling_curve", dg.AssetSelection.assets("cpt_scaling_curve"), instance)
        return
    parts = PER_DOMAIN if stage in ("all", "domain") else (stage,)
    if set(parts) & set(PER_DOMAIN):
        keys = instance.get_dynamic_partitions(domain_partitions.name)
        if not keys:
            sys.exit("no domain partitions yet: run --stage corpus first")
        # --system names the SFT systems to train, or the LLM systems to score
        scoring_only = stage == "evaluation" and args.system
        systems = [] if scoring_only else _chosen("--system", args.system, profile.sft.systems)
        scored = _chosen("--system", args.system, dict.fromkeys(
            name for name, _ in planned_llm_systems(profile))) if scoring_only else []
        for key in _chosen("--domain", args.domain, keys):
            if "sasrec" in parts:
                run(f"domain[{key}]", dg.AssetSelection.assets(
                    "domain_users", "sasrec", "gru4rec", "candidate_sets",
                    *profile.item_text.systems), instance, key)
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
                    {"evaluation": {"config": {"systems": scored}}})
            if "recommend" in parts:
                run(f"recommend[{key}]", dg.AssetSelection.assets(
                    "full_ranking", "recommendations"), instance, key)
    if stage not in ("all", "summary"):
        return
    run("leaderboard", dg.AssetSelection.assets("leaderboard"), instance)
    with cprec.connect() as con:
        print()
        print(corpus_summary(con))
    rows = []
    for variant in profile.cpt.variants:
        m = json.loads(layout.cpt_adapter(variant).manifest.read_text())
        rows.append((variant, m["base_model"], m["tokens"], m["steps"],
                     "/".join(str(m["phase_steps"][p]) for p in ("warmup", "stable", "anneal")),
                     m["final_loss"], m["tokens_per_second"], m["dtype"]))
    print()
    print("Next-item models per target domain: SASRec, GRU4Rec and the text systems (item"
          " table + LLM title embeddings); full ranking over the domain's items, history"
          " excluded")
    sas = []
    for key in instance.get_dynamic_partitions(domain_partitions.name):
        for name, seed, files in trained_next_item_models(profile, key):
            m = json.loads(files.manifest.read_text())
            sas.append((m["domain"], name, seed, (m.get("item_embeddings") or {}).get(
                "source", ""), m["users"], m["shape"]["n_items"], m["epochs"], m["seconds"],
                m["valid"]["ndcg@10"], m["test"]["hr@10"], m["test"]["ndcg@10"]))
    print(md_table(["domain", "model", "seed", "text", "users", "items", "epochs", "seconds",
                    "valid NDCG@10", "test HR@10", "test NDCG@10"], sas))
    print()
    print("SFT adapters (objective: ntp = LLaRA's recipe, rank = candidate-aware; hybrid ="
          " steps with the hybrid prompt; validation: HR@1 sum/mean and loss per answer of the"
          " weights kept; specific: item-specific share of the injected vectors, before ->"
          " after)")
    sft = []
    for key in instance.get_dynamic_partitions(domain_partitions.name):
        for name in profile.sft.systems:
            for seed in profile.sft.seeds_for(name):
                m = json.loads(layout.sft_run(name, key, seed).manifest.read_text())
                v, inj = m.get("validation"), m.get("injection", {})
                sft.append((m["domain"], name, seed, m.get("objective", "ntp"), m["samples"],
                            m["steps"], m["hybrid_steps"], m["final_loss"],
                            f"{v['hr@1 (sum)']:.2f}/{v['hr@1 (mean)']:.2f}/"
                            f"{v['loss per answer']:.2f}" if v else "",
                            f"{inj['before']['item_specific_share']:.2f} ->"
                            f" {inj['after']['item_specific_share']:.2f}" if inj else "",
                            m["tokens_per_second"], lora_init(name)))
    print(md_table(["domain", "system", "seed", "objective", "samples", "steps", "hybrid",
                    "final loss", "validation", "specific", "tokens/s", "LoRA init"], sft))
    dpo = dpo_table(profile)
    if dpo:
        print()
        print("DPO adapters (from the SFT adapter named; pairs mined on training windows;"
              " SFT HR@1 on those windows; loss first -> last step, ln 2 = 0.693 at the start;"
              " reward margin and accuracy of the last step; validation HR@1 sum/mean beside"
              " the SFT run's)")
        print(md_table(DPO_TABLE_HEADER, dpo))
    embedded = [json.loads(layout.item_embeddings(source).manifest.read_text())
                for source in profile.item_text.sources()
                if layout.item_embeddings(source).exists()]
    if embedded:
        print()
        print("LLM item embeddings (every item's title, one forward each; the text systems"
              " read them)")
        print(md_table(["source", "model", "items", "dim", "pooling", "seconds", "items/s",
                        "dtype", "device"],
                       [(m["source"], m["model"], m["items"], m["dim"], m["pooling"],
                         m["seconds"], m["items_per_second"], m["dtype"], m["device"])
                        for m in embedded]))
    print()
    print("CPT adapters")
    print(md_table(["variant", "model", "tokens", "steps", "warmup/stable/anneal",
                    "final loss", "tokens/s", "dtype"], rows))
    print()
    print("Leaderboard: test cases on the fixed 20-candidate sets. HR@1 ranking = scores"
          " (classic, fused) or likelihood, summed or per token as chosen on validation (LLM);"
          " generation = greedy answer (ValidRatio,"
          " HR@1 over valid answers and over all cases).")
    with cprec.connect() as con:
        print(leaderboard_markdown(con))
        print()
        print(full_ranking_markdown(con))
        print()
        for key in instance.get_dynamic_partitions(domain_partitions.name):
            files = layout.recommendation_files(key)
            if not files.current.is_file():
                continue
            info = json.loads(files.current.read_text())
            rerank = info["models"]["rerank"]
            print(f"Recommendations {info['domain']}: top {info['k']} for {info['users']:,} users"
                  f" ({info['reranked_users']:,} re-ranked by"
                  f" {rerank['system'] if rerank else 'no LLM'}), snapshot {info['version']}"
                  f" in {files.path} (`make serve` serves it); the most recent users:")
            print(md_table(["user", "recent history (oldest first)", "recommended (best first)"],
                           recommendation_sample(con, info["domain"], users=3), max_cell=240))
    print("\nAt this demo scale the simple baselines are expected to win (method.md section 3);"
          " `make results` writes these tables to docs/RESULTS.md.")


if __name__ == "__main__":
    main()
