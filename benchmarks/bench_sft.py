"""Benchmark: an SFT step of the paper's recipe (next-token loss on the target title) beside
a step of the candidate-aware objective (one tree forward over the prompt and all 20
candidates' titles), with and without the candidate listing in the prompt.

    python benchmarks/bench_sft.py [--profile demo] [--domain crime] [--steps 3]

Each arm is the real trainer (cprec_core.training.sft.SFTTrainer, fresh LoRA: ``llara`` and
``llara_rank``) on the profile's data, set up but never saved (seed 99, so no run folder
of the profile is touched); the profile's batch and micro-batch sizes; the last ``1 +
--steps`` steps of each plan (the curriculum reads the hybrid prompt there), the first not
timed. Tokens are the tokens through the model: prompt and target answer (ntp), prompt once
and every candidate's answer (rank). The question the issue asks is per sample token
(tokens/s); per sample, the candidate-aware step reads about twice the tokens.

Needs the profile's database, SASRec and tokenizer (``make demo`` or its corpus and sasrec
stages).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from cprec_core.config import load_profile
from cprec_core.provenance import processor
from cprec_core.reporting import md_table
from cprec_core.training.loop import one_step
from cprec_core.training.sft import SFTTrainer


def timed_steps(trainer, steps: int, units=lambda t, step: len(t.steps[step])) -> dict:
    """Seconds, tokens and ``units`` (samples by default; DPO counts pairs) of the plan's
    last ``steps`` steps; one step before them warms up the kernels and the allocator."""
    total = trainer.total_steps
    if total < steps + 1:
        raise SystemExit(f"{trainer.system}: the plan has {total} steps, fewer than 1 + --steps")
    seconds, tokens, count, prompts = 0.0, 0, 0, []
    for k, step in enumerate(range(total - steps - 1, total)):
        t0 = time.perf_counter()
        row = one_step(trainer, step, trainer.cfg.grad_clip)  # what the trainer's loop runs
        elapsed = time.perf_counter() - t0
        if k:
            seconds += elapsed
            tokens += row["tokens"]
            count += units(trainer, step)
            prompts.append(row.get("prompt", "hybrid"))
    return {"s/step": seconds / steps, "units": count, "s/unit": seconds / count,
            "tokens/unit": tokens / count, "tokens/s": tokens / seconds,
            "prompts": ",".join(prompts)}


def measure(profile, domain: str, system: str, steps: int) -> dict:
    trainer = SFTTrainer(profile, domain, system, seed=99)
    trainer.setup()
    m = timed_steps(trainer, steps)
    return {"s/step": m["s/step"], "samples/s": 1 / m["s/unit"], "s/sample": m["s/unit"],
            "tokens/sample": m["tokens/unit"], "tokens/s": m["tokens/s"],
            "prompts": m["prompts"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--domain", default="crime")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    base = load_profile(args.profile, {"data_dir": args.data_dir})
    arms = []
    for label, system, listing in (("ntp (paper recipe)", "llara", True),
                                   ("rank, listing", "llara_rank", True),
                                   ("rank, no listing", "llara_rank", False)):
        rank = dataclasses.replace(base.sft.rank, listing=listing, epochs=1,
                                   max_samples=base.sft.max_samples, select_every=0)
        profile = dataclasses.replace(base, sft=dataclasses.replace(
            base.sft, rank=rank, validation_cases=1))  # loaded, never scored here
        torch.manual_seed(0)
        arms.append((label, measure(profile, args.domain, system, args.steps)))
    ntp = arms[0][1]
    keys = ["s/step", "samples/s", "s/sample", "tokens/sample", "tokens/s"]
    print(f"SFT step on {args.domain} ({args.profile}: batch {base.sft.batch_size}, micro-batch"
          f" {base.sft.micro_batch}), {processor()}, {torch.get_num_threads()} threads,"
          f" {args.steps} timed steps each")
    print(md_table(["arm", *keys, "tokens/s vs ntp", "prompts"],
                   [(label, *[round(m[k], 3) for k in keys],
                     f"{m['tokens/s'] / ntp['tokens/s']:.2f}x", m["prompts"])
                    for label, m in arms]))


if __name__ == "__main__":
    main()
