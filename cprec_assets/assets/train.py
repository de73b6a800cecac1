"""Training assets: each runs a `cprec_core` trainer as a child process through Dagster Pipes
(`accelerate launch -m cprec_core.<tool>`), so the same command scales to several GPUs, or
moves to a cluster by swapping the Pipes client (see docs/SCALING.md)."""

import base64
import json
import os
import sys

import dagster as dg

from cprec_assets.assets.data import cpt_corpus
from cprec_assets.resources import CPRecConfig
from cprec_core.config import CPT_VARIANTS
from cprec_core.plots import training_curves
from cprec_core.reporting import md_table

TRAIN_POOL = "train"


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
    return [*launch, "-m", module, *source, "--data-dir", profile.data_dir, *args]


def png_markdown(path) -> dg.MetadataValue:
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![training curves](data:image/png;base64,{data})")


def build_cpt_asset(variant: str) -> dg.AssetsDefinition:
    @dg.asset(name=cpt_asset_name(variant), group_name="cpt", deps=[cpt_corpus],
              pool=TRAIN_POOL, kinds={"pytorch"}, tags={"variant": variant},
              description=f"CPT LoRA adapter, schedule variant `{variant}` (cprec_core.cpt).")
    def _cpt(context: dg.AssetExecutionContext, cprec: CPRecConfig,
             pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        profile = cprec.load()
        command = accelerate_command(cprec, "cprec_core.cpt", "--variant", variant)
        context.log.info(" ".join(command))
        invocation = pipes_subprocess_client.run(context=context, command=command)
        reported = invocation.get_materialize_result().metadata or {}
        out = profile.cpt_dir(variant)
        manifest = json.loads((out / "manifest.json").read_text())
        png = training_curves(out / "train_log.jsonl", out / "curves.png",
                              f"CPT {variant}: {manifest['tokens']:,} tokens")
        return dg.MaterializeResult(metadata={
            **reported,
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
