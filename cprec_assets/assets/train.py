"""Training assets: each runs a `cprec_core` trainer as a child process through Dagster Pipes
(`accelerate launch -m cprec_core.training.<tool>`), so the same command scales to several
GPUs, or moves to a Kubernetes pod by setting the `launcher` resource (cprec_assets.launcher,
docs/SCALING.md). One CPT asset per registered variant and one SFT asset per registered
system (cprec_core.systems)."""

import hashlib
import json

import dagster as dg
import pyarrow.parquet as pq

from cprec_assets.assets.collab import sasrec
from cprec_assets.assets.data import cpt_corpus
from cprec_assets.automation import TRAIN
from cprec_assets.launcher import TrainingLauncher
from cprec_assets.metadata import png, table
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_assets.tracking import MlflowTracking, register_adapters
from cprec_assets.versions import code_version
from cprec_core.config import ConfigError
from cprec_core.layout import RunManifest, TrainedAdapter
from cprec_core.tracking import model_name
from cprec_core.data.sources.base import file_sha256
from cprec_core.systems import (CPT_VARIANTS, DPO_SYSTEMS, SFT_SYSTEMS, CPTVariant, System,
                                cpt_variant, system as registered)
from cprec_core.training.distributed import CONFIG_DIR, accelerate_config_file
from cprec_core.training.plots import preference_curves, training_curves

TRAIN_POOL = "train"
PIPES_REPORTER = "cprec_assets.pipes_reporter:open_pipes_reporter"


def accelerate_command(cprec: ProfileResource, module: str, *args: str,
                       launcher: TrainingLauncher | None = None) -> list[str]:
    """``accelerate launch -m <module>`` for this run's profile, reporting through Pipes;
    the interpreter, cores and data folder are the launcher's (here, or its pod's)."""
    launcher = launcher or TrainingLauncher()
    if launcher.kind == "k8s":
        launcher.check()
        check_processes(cprec, launcher)
    threads = max(1, launcher.cores() // cprec.num_processes)
    launch = [launcher.python_executable(), "-m", "accelerate.commands.launch",
              "--num_processes", str(cprec.num_processes), "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", str(threads)]
    # accelerate's --cpu starts one process whatever --num_processes says: several processes
    # (on CPUs or GPUs) run under the shipped DDP or FSDP config of train.distributed
    config = accelerate_config_file(cprec.profile, module.rsplit(".", 1)[-1])
    if config is None and cprec.num_processes > 1:
        config = CONFIG_DIR / "ddp.yaml"
    if config is not None:
        launch += ["--config_file", launcher.repo_file(config)]
    elif cprec.profile.device == "cpu":
        launch.append("--cpu")
    return [*launch, "-m", module, *tool_arguments(cprec, launcher), *args]


def check_processes(cprec: ProfileResource, launcher: TrainingLauncher) -> None:
    """A GPU pod runs at most one training process per GPU it was given."""
    if launcher.gpus and cprec.num_processes > launcher.gpus:
        raise ConfigError(f"cprec.num_processes ({cprec.num_processes}) is more than the pod's"
                          f" launcher.gpus ({launcher.gpus}): one process per GPU")
    if not launcher.gpus and cprec.profile.device.startswith("cuda"):
        raise ConfigError(f"launcher.gpus is 0 but the profile's device is"
                          f" {cprec.profile.device}: give the pod a GPU or use device cpu/auto")


def tool_arguments(cprec: ProfileResource, launcher: TrainingLauncher | None = None) -> list[str]:
    """The arguments every ``cprec_core`` command of a run gets: its profile (or config
    file), data folder (in a pod: the mount of the data volume) and the Pipes reporter."""
    launcher = launcher or TrainingLauncher()
    source = (["--config", cprec.config_file] if cprec.config_file
              else ["--profile", cprec.profile_name])
    return [*source, "--data-dir", launcher.data_dir(cprec.profile.data_dir),
            "--reporter", PIPES_REPORTER]


def build_cpt_asset(variant: CPTVariant) -> dg.AssetsDefinition:
    @dg.asset(name=variant.asset, group_name="cpt", deps=[cpt_corpus], pool=TRAIN_POOL,
              kinds={"pytorch"}, tags={"variant": variant.name},
              code_version=code_version("1", "model", "cpt"),
              automation_condition=TRAIN if variant.automated else None,  # else by hand
              description=f"CPT LoRA adapter, variant `{variant.name}`: {variant.description}.")
    def _cpt(context: dg.AssetExecutionContext, cprec: ProfileResource,
             launcher: TrainingLauncher, mlflow: MlflowTracking) -> dg.MaterializeResult:
        command = accelerate_command(cprec, "cprec_core.training.cpt", "--variant", variant.name,
                                     launcher=launcher)
        context.log.info(" ".join(command))
        reported = launcher.run(context=context, command=command, env=mlflow.child_env(context)
                                ).get_materialize_result().metadata or {}
        run = cprec.profile.layout.cpt_adapter(variant.name)
        manifest = run.read_manifest()
        curves = training_curves(run.train_log, run.curves,
                                 f"CPT {variant.name}: {manifest.tokens:,} tokens")
        # the plan fingerprint covers the corpus snapshot, the config and the base model
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.plan_fingerprint), metadata={
                **reported, **mlflow.run_metadata(cprec.profile, manifest.mlflow_run_id),
                "corpus_fingerprint": manifest.corpus_fingerprint,
                "adapter": dg.MetadataValue.path(str(run.adapter)),
                "train_log": dg.MetadataValue.path(str(run.train_log)), "curves": png(curves),
                "phases": table(["phase", "steps"], list(manifest.phase_steps.items())),
                "manifest": dg.MetadataValue.json(manifest.to_dict())})

    return _cpt


FINITE = ("The adapter's weights and the final loss are finite numbers. An adapter that passes"
          " gets a version in the MLflow model registry (tracking.register).")


def adapters_check(context: dg.AssetCheckExecutionContext, cprec: ProfileResource,
                   mlflow: MlflowTracking, runs: list[tuple[str, TrainedAdapter]]
                   ) -> dg.AssetCheckResult:
    """``adapter_is_finite`` over (registered model name, run) pairs: passed where every
    adapter is; those that are get their model version."""
    from cprec_core.training.adapter_check import adapter_health  # torch: only when run

    rows, passed = [], []
    for name, run in runs:
        health = adapter_health(run)
        rows.append((name, health["tensors"], health["non_finite"], health["final_loss"],
                     health["passed"]))
        if health["passed"]:
            passed.append((name, run))
    ok = len(passed) == len(runs)
    metadata = {"adapters": table(["adapter", "tensors", "non-finite", "final loss", "passed"],
                                  rows),
                "non_finite": sum(r[2] for r in rows), "final_loss": rows[0][3] if rows else None}
    metadata.update(register_adapters(mlflow, cprec.profile, passed, context.log.warning))
    return dg.AssetCheckResult(passed=ok, metadata=metadata)


def build_cpt_check(variant: CPTVariant) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=variant.asset, name="adapter_is_finite", blocking=True,
                    description=FINITE)
    def _check(context: dg.AssetCheckExecutionContext, cprec: ProfileResource,
               mlflow: MlflowTracking) -> dg.AssetCheckResult:
        profile = cprec.profile
        return adapters_check(context, cprec, mlflow, [
            (model_name(profile, "cpt", variant.name), profile.layout.cpt_adapter(variant.name))])

    return _check


def build_seed_check(system: System) -> dg.AssetChecksDefinition:
    """``adapter_is_finite`` of an SFT or DPO asset: every seed's adapter of the partition."""
    @dg.asset_check(asset=system.asset, name="adapter_is_finite", blocking=True,
                    partitions_def=domain_partitions, description=FINITE)
    def _check(context: dg.AssetCheckExecutionContext, cprec: ProfileResource,
               mlflow: MlflowTracking) -> dg.AssetCheckResult:
        profile, key = cprec.profile, context.partition_key
        seeds = profile.sft.seeds_for(system.sft_init or system.name)
        return adapters_check(context, cprec, mlflow, [
            (model_name(profile, system.name, key), profile.layout.sft_run(system.name, key, seed))
            for seed in seeds])

    return _check


def build_sft_asset(system: System) -> dg.AssetsDefinition:
    start = system.cpt_variant and cpt_variant(system.cpt_variant)
    source = f"initialised from the CPT adapter `{start.name}`" if start else "fresh LoRA (no CPT)"

    # a residual system also reads GRU4Rec: its classic partner is the better of the two
    partners = ["gru4rec"] if system.residual else []

    @dg.asset(name=system.asset, group_name="sft",
              deps=[sasrec, *partners, *([start.asset] if start else [])],
              pool=TRAIN_POOL, partitions_def=domain_partitions, kinds={"pytorch"},
              tags={"system": system.name}, code_version=code_version("1", "model", "sft"),
              automation_condition=TRAIN if system.automated else None,
              description=f"Per-domain SFT with LLaRA's hybrid prompt, {source}.")
    def _sft(context: dg.AssetExecutionContext, cprec: ProfileResource,
             launcher: TrainingLauncher, mlflow: MlflowTracking) -> dg.MaterializeResult:
        command = accelerate_command(cprec, "cprec_core.training.sft", "--domain",
                                     context.partition_key, "--system", system.name,
                                     launcher=launcher)
        reported = launcher.run(context=context, command=command, env=mlflow.child_env(context)
                                ).get_materialize_result().metadata or {}
        seeds = cprec.profile.sft.seeds_for(system.name)
        run = cprec.profile.layout.sft_run(system.name, context.partition_key, seeds[0])
        rows = [json.loads(x) for x in run.train_log.read_text().splitlines()]
        manifest = run.read_manifest()
        seen = {"data_version": manifest.data_version,  # of domain_users[domain]
                "init_corpus_fingerprint": manifest.init_manifest or "(fresh LoRA)"}
        version = hashlib.sha256(json.dumps([manifest.fingerprint, seen]).encode()).hexdigest()
        return dg.MaterializeResult(data_version=dg.DataVersion(version[:16]), metadata={
            **reported, **mlflow.run_metadata(cprec.profile, manifest.mlflow_run_id), **seen,
            "seeds": ",".join(map(str, seeds)),
            "adapter": dg.MetadataValue.path(str(run.adapter)),
            "projector": dg.MetadataValue.path(str(run.projector)),
            "train_log": table(["step", "prompt", "p_hybrid", "lr", "loss", "tokens"], [
                (r["step"], r["prompt"], r["p_hybrid"], f"{r['lr']:.2e}", r["loss"], r["tokens"])
                for r in rows[-20:]]),
            **sft_diagnostics(manifest)})

    return _sft


def sft_diagnostics(manifest: RunManifest) -> dict:
    """What the UI shows of an SFT run beyond its log: the injected vectors before and after
    training (cprec_core.models.hybrid.injection_diagnostics), the validation curve and the
    scores of the weights kept (model selection), and the scoring they chose."""
    out = {}
    injection = manifest.injection or {}
    if injection:
        keys = ["vector_norm", "token_row_norm", "item_specific_share", "mean_pairwise_cosine"]
        out["injected_vectors"] = table(["when", *keys], [
            (when, *[injection[when][k] for k in keys]) for when in ("before", "after")
            if when in injection])
    curve = manifest.validation_curve or ([manifest.validation] if manifest.validation else [])
    if curve:
        keys = ["step", "cases", "hr@1 (sum)", "hr@1 (mean)", "mrr (sum)", "mrr (mean)",
                "loss per answer", "loss se"]  # MRR and the error: runs since they were kept
        if manifest.residual:
            keys.insert(6, "mrr (residual)")
        out["validation"] = table(keys, [[r.get(k, "") for k in keys] for r in curve])
        out["validation_kept_step"] = manifest.validation["step"]
        out["validation_selected"] = manifest.validation.get("selected", "")
        out["scoring"] = manifest.scoring
    if manifest.residual:  # cprec_core.training.residual
        out["residual_partner"] = manifest.residual["partner"]
        out["residual_gate"] = manifest.residual["gate"]
    return out


def build_dpo_assets(system: System) -> list[dg.AssetsDefinition]:
    """The mined preference pairs and the DPO adapter of one DPO system, per domain."""
    sft = registered(system.sft_init)

    def layout_of(cprec: ProfileResource, key: str):
        """The first seed's run (as the SFT assets show theirs)."""
        return cprec.profile.layout.sft_run(system.name, key, cprec.profile.sft.seeds_for(sft.name)[0])

    @dg.asset(name=system.pairs_asset, group_name="dpo", deps=[sft.asset], pool=TRAIN_POOL,
              partitions_def=domain_partitions, kinds={"pytorch", "parquet"},
              tags={"system": system.name}, code_version=code_version("1", "dpo"),
              description=f"Preference pairs for `{system.name}`: training windows scored by"
                          f" the `{sft.name}` adapter; chosen = the target, rejected = its"
                          " highest-ranked wrong candidates and random ones, with the scores"
                          " that chose them (also DPO's reference log-likelihoods).")
    def _pairs(context: dg.AssetExecutionContext, cprec: ProfileResource,
               launcher: TrainingLauncher) -> dg.MaterializeResult:
        # one process
        command = [launcher.python_executable(), "-m", "cprec_core.training.dpo_pairs",
                   *tool_arguments(cprec, launcher), "--domain", context.partition_key,
                   "--system", system.name]
        reported = launcher.run(
            context=context, command=command).get_materialize_result().metadata or {}
        run = layout_of(cprec, context.partition_key)
        info = json.loads(run.pairs_info.read_text())
        sample = pq.read_table(run.pairs).slice(0, 12).to_pylist()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(run.pairs)[:16]), metadata={
                **reported, "pairs_file": dg.MetadataValue.path(str(run.pairs)),
                "summary": dg.MetadataValue.json(info["summary"]),
                "sample": table(["window", "chosen", "rejected", "kind", "rejected_rank",
                                 "ref_chosen", "ref_rejected"],
                                [(r["window"], r["chosen"], r["rejected"], r["kind"],
                                  r["rejected_rank"], round(r["ref_chosen"], 2),
                                  round(r["ref_rejected"], 2)) for r in sample])})

    @dg.asset(name=system.asset, group_name="dpo", deps=[system.pairs_asset], pool=TRAIN_POOL,
              partitions_def=domain_partitions, kinds={"pytorch"},
              tags={"system": system.name}, code_version=code_version("1", "model", "dpo"),
              description=f"DPO of the `{sft.name}` adapter on its mined pairs, that adapter"
                          " frozen as the reference.")
    def _dpo(context: dg.AssetExecutionContext, cprec: ProfileResource,
             launcher: TrainingLauncher, mlflow: MlflowTracking) -> dg.MaterializeResult:
        command = accelerate_command(cprec, "cprec_core.training.dpo", "--domain",
                                     context.partition_key, "--system", system.name,
                                     launcher=launcher)
        reported = launcher.run(context=context, command=command, env=mlflow.child_env(context)
                                ).get_materialize_result().metadata or {}
        run = layout_of(cprec, context.partition_key)
        rows = [json.loads(x) for x in run.train_log.read_text().splitlines()]
        manifest = run.read_manifest()
        curves = preference_curves(run.train_log, run.curves, f"DPO {system.name}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.fingerprint), metadata={
                **reported, **mlflow.run_metadata(cprec.profile, manifest.mlflow_run_id),
                "sft_adapter": manifest.sft_adapter,
                "pairs_sha256": manifest.pairs_sha256,
                "adapter": dg.MetadataValue.path(str(run.adapter)), "curves": png(curves),
                "train_log": table(["step", "lr", "loss", "margin", "accuracy", "pairs"], [
                    (r["step"], f"{r['lr']:.2e}", r["loss"], r["margin"], r["accuracy"],
                     r["pairs"]) for r in rows[-20:]]),
                **sft_diagnostics(manifest)})

    return [_pairs, _dpo]


cpt_assets = [build_cpt_asset(v) for v in CPT_VARIANTS]
cpt_checks = [build_cpt_check(v) for v in CPT_VARIANTS]
adapter_checks = [build_seed_check(s) for s in [*SFT_SYSTEMS, *DPO_SYSTEMS]]
sft_assets = [build_sft_asset(s) for s in SFT_SYSTEMS]
dpo_assets = [asset for s in DPO_SYSTEMS for asset in build_dpo_assets(s)]
