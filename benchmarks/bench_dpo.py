"""Benchmark: a DPO step per pair beside the SFT step per sample it follows, and mining per
window beside scoring per case.

    python benchmarks/bench_dpo.py [--profile demo] [--domain crime] [--steps 3]

Arms (the real trainers on the profile's data, set up but never saved):
- SFT: ``cprec_rank``'s candidate-aware step (cprec_core.training.sft.SFTTrainer, seed 99 so
  no run of the profile is touched): one tree forward over the prompt and 20 answers.
- DPO: ``cprec_dpo``'s step (cprec_core.training.dpo.DPOTrainer) from the profile's
  ``cprec_rank`` adapter of seed 0, on pairs mined into a temporary folder: one tree
  forward over the prompt and the chosen and rejected answers of each window.
- Mining: the SFT adapter scoring the windows (likelihood only), per window.
The profile's batch and micro-batch sizes, the last ``1 + --steps`` steps of each plan, the
first not timed. The issue's goal: DPO seconds per pair within 1.5x of SFT seconds per
sample.

Needs the profile's database, SASRec, CPT adapter and ``cprec_rank`` adapter (``make demo``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from cprec_core.config import load_profile
from cprec_core.layout import TrainedAdapter
from cprec_core.progress import Reporter
from cprec_core.provenance import processor
from cprec_core.reporting import md_table
from cprec_core.training.dpo import DPOTrainer
from cprec_core.training.dpo_pairs import ensure_pairs
from cprec_core.training.sft import SFTTrainer

from bench_sft import timed_steps  # noqa: E402 - benchmarks/ is the script's folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--domain", default="crime")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    base = load_profile(args.profile, {"data_dir": args.data_dir})
    profile = dataclasses.replace(base, sft=dataclasses.replace(base.sft, validation_cases=1))
    torch.manual_seed(0)
    sft = SFTTrainer(profile, args.domain, "cprec_rank", seed=99)
    sft.setup()
    sft_arm = timed_steps(sft, args.steps)
    del sft
    with tempfile.TemporaryDirectory() as tmp:
        run = TrainedAdapter(Path(tmp) / "cprec_dpo")
        started = time.perf_counter()
        info = ensure_pairs(profile, args.domain, "cprec_dpo", 0, Reporter(False), run)
        mining = (time.perf_counter() - started) / info["summary"]["windows"]
        dpo = DPOTrainer(profile, args.domain, "cprec_dpo", Reporter(False), 0)
        dpo.run = run
        dpo.setup()
        dpo_arm = timed_steps(dpo, args.steps,
                              lambda t, s: sum(len(t.windows[i].rejected) for i in t.steps[s]))
    print(f"DPO and SFT steps on {args.domain} ({args.profile}: SFT batch {base.sft.batch_size},"
          f" DPO batch {base.dpo.batch_size} windows, micro-batch {base.sft.micro_batch}/"
          f"{base.dpo.micro_batch}), {processor()}, {torch.get_num_threads()} threads,"
          f" {args.steps} timed steps each")
    print(md_table(["arm", "s/step", "unit", "s/unit", "tokens/s", "vs SFT per sample"], [
        ("SFT cprec_rank", round(sft_arm["s/step"], 3), "sample", round(sft_arm["s/unit"], 3),
         round(sft_arm["tokens/s"], 1), "1.00x"),
        ("DPO cprec_dpo", round(dpo_arm["s/step"], 3), "pair", round(dpo_arm["s/unit"], 3),
         round(dpo_arm["tokens/s"], 1), f"{dpo_arm['s/unit'] / sft_arm['s/unit']:.2f}x"),
        ("mining (SFT adapter, likelihood)", "", "window", round(mining, 3), "", ""),
    ]))


if __name__ == "__main__":
    main()
