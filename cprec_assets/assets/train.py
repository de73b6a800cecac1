"""Training assets: each runs a `cprec_core` trainer as a child process through Dagster Pipes
(`accelerate launch -m cprec_core.<tool>`), so the same command scales to several GPUs, or
moves to a cluster by swapping the Pipes client (see docs/SCALING.md)."""

import base64
import hashlib
import json
import os
import sys

import dagster as dg

from cprec_assets.assets.collab import sasrec
from cprec_assets.assets.data import cpt_corpus
from cprec_assets.automation import TRAIN
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import CPRecConfig
from cprec_core.config import CPT_VARIANTS
from cprec_core.training.sft import cpt_variant
from cprec_core.training.plots import training_curves
from cprec_core.reporting import md_table

TRAIN_POOL = "train"
PIPES_REPORTER = "cprec_assets.pipes_reporter:open_pipes_reporter"


def cpt_asset_name(variant: str) -> str:
    return "cpt_adapter" if variant == "wsa" else f"cpt_adapter_{variant}"


def accelerate_command(cprec: CPRecConfig, module: str, *args: str) -> list[str]:
    profile = cprec.load()
    launch = [sys.executable, "-m", "accelerate.commands.launch",
              "--num_processes", str(cprec.num_processes), "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // cprec.num_processes))]
    if profile.device == "cpu":
        launch.append("--cpu")
    source = ["--config", cprec.config_file] if cprec.config_file else ["--profile", cprec.profile]
    return [*launch, "-m", module, *source, "--data-dir", profile.data_dir,
            "--reporter", PIPES_REPORTER, *args]


def png_markdown(path, alt: str = "training curves") -> dg.MetadataValue:
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def build_cpt_asset(variant: str) -> dg.AssetsDefinition:
    @dg.asset(name=cpt_asset_name(variant), group_name="cpt", deps=[cpt_corpus],
              pool=TRAIN_POOL, kinds={"pytorch"}, tags={"variant": variant}, code_version="1",
              automation_condition=TRAIN if variant == "wsa" else None,  # ablations: by hand
              description=f"CPT LoRA adapter, schedule variant `{variant}` (cprec_core.training.cpt).")
    def _cpt(context: dg.AssetExecutionContext, cprec: CPRecConfig,
             pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        profile = cprec.load()
        command = accelerate_command(cprec, "cprec_core.training.cpt", "--variant", variant)
        context.log.info(" ".join(command))
        invocation = pipes_subprocess_client.run(context=context, command=command)
        reported = invocation.get_materialize_result().metadata or {}
        out = profile.cpt_dir(variant)
        manifest = json.loads((out / "manifest.json").read_text())
        png = training_curves(out / "train_log.jsonl", out / "curves.png",
                              f"CPT {variant}: {manifest['tokens']:,} tokens")
        # the plan fingerprint covers the corpus snapshot, the config and the base model
        return dg.MaterializeResult(data_version=dg.DataVersion(manifest["plan_fingerprint"]), metadata={
            **reported,
            "corpus_fingerprint": manifest["corpus_fingerprint"],  # the data it saw
            "adapter": dg.MetadataValue.path(str(out / "adapter")),
            "train_log": dg.MetadataValue.path(str(out / "train_log.jsonl")),
            "curves": png_markdown(png),
            "phases": dg.MetadataValue.md(md_table(
                ["phase", "steps"], list(manifest["phase_steps"].items()))),
            "manifest": dg.MetadataValue.json(manifest),
        })

    return _cpt


cpt_assets = [build_cpt_asset(v) for v in CPT_VARIANTS]


def _cpt_check(variant: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=cpt_asset_name(variant), name="adapter_is_finite", blocking=True,
                    description="The adapter's weights and the final loss are finite numbers.")
    def _check(cprec: CPRecConfig) -> dg.AssetCheckResult:
        import math

        import torch
        from safetensors.torch import load_file

        out = cprec.load().cpt_dir(variant)
        weights = load_file(out / "adapter" / "adapter_model.safetensors")
        bad = [k for k, t in weights.items() if not torch.isfinite(t).all()]
        loss = json.loads((out / "manifest.json").read_text())["final_loss"]
        return dg.AssetCheckResult(passed=not bad and loss is not None and math.isfinite(loss),
                                   metadata={"tensors": len(weights), "non_finite": len(bad),
                                             "final_loss": loss})

    return _check


cpt_checks = [_cpt_check(v) for v in CPT_VARIANTS]


SFT_SYSTEMS = ("llara", "cprec", *(f"cprec_{v}" for v in CPT_VARIANTS if v != "wsa"))


def sft_asset_name(system: str) -> str:
    if system == "llara":
        return "llara_adapter"
    return "sft_adapter" if system == "cprec" else f"sft_adapter_{system.removeprefix('cprec_')}"


def build_sft_asset(system: str) -> dg.AssetsDefinition:
    variant = cpt_variant(system)
    deps = [sasrec] + ([cpt_asset_name(variant)] if variant else [])
    source = f"initialised from the CPT adapter `{variant}`" if variant else "fresh LoRA (no CPT)"

    @dg.asset(name=sft_asset_name(system), group_name="sft", deps=deps, pool=TRAIN_POOL,
              partitions_def=domain_partitions, kinds={"pytorch"}, tags={"system": system},
              code_version="1", automation_condition=TRAIN if system in ("cprec", "llara") else None,
              description=f"Per-domain SFT with LLaRA's hybrid prompt, {source} (cprec_core.training.sft).")
    def _sft(context: dg.AssetExecutionContext, cprec: CPRecConfig,
             pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        profile = cprec.load()
        command = accelerate_command(cprec, "cprec_core.training.sft", "--domain", context.partition_key,
                                     "--system", system)
        invocation = pipes_subprocess_client.run(context=context, command=command)
        reported = invocation.get_materialize_result().metadata or {}
        seeds = profile.sft.seeds_for(system)
        out = profile.sft_dir(system, context.partition_key, seeds[0])
        rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        manifest = json.loads((out / "manifest.json").read_text())
        seen = {"data_version": manifest["data_version"],  # of domain_users[domain]
                "init_corpus_fingerprint": manifest["init_manifest"] or "(fresh LoRA)"}
        version = hashlib.sha256(json.dumps([manifest["fingerprint"], seen]).encode()).hexdigest()
        return dg.MaterializeResult(data_version=dg.DataVersion(version[:16]), metadata={
            **reported,
            **seen,
            "seeds": ",".join(map(str, seeds)),
            "adapter": dg.MetadataValue.path(str(out / "adapter")),
            "projector": dg.MetadataValue.path(str(out / "projector.safetensors")),
            "train_log": dg.MetadataValue.md(md_table(
                ["step", "prompt", "p_hybrid", "lr", "loss", "tokens"],
                [(r["step"], r["prompt"], r["p_hybrid"], f"{r['lr']:.2e}", r["loss"], r["tokens"])
                 for r in rows[-20:]])),
        })

    return _sft


sft_assets = [build_sft_asset(s) for s in SFT_SYSTEMS]
