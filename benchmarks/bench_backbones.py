"""Benchmark: what a backbone costs, SmolLM2-135M beside Gemma 3 270M, in one run.

For each profile (default ``demo`` with SmolLM2-135M and ``demo-gemma3``, the same profile
with Gemma 3 270M), on that profile's own corpus and candidate sets (so each model reads
its own tokenizer's tokens), each in a child process of its own for its peak memory:

* ``cpt``: the real trainer (``CPTTrainer.setup`` on a slice of about ``--tokens`` corpus
  tokens, then ``train_step``): LoRA on the frozen base in the profile's dtype, packed
  blocks of 512, chunked cross-entropy. One warm-up step, then ``--steps`` timed steps:
  tokens/s, model FLOPs per token (bench_cpt.py's formula: frozen body, LM head, LoRA,
  attention) and the LM head's share of them, MFU against the measured bf16 matmul peak.
* ``score``: the evaluation's likelihood scoring of a case's 20 candidates (``LLMScorer``,
  the zero-shot ``base`` system, text prompt, no generation) on the first ``--cases`` test
  cases of the first target domain, after a warm-up batch: seconds per case.
* ``matmul``: this machine's bf16 matmul peak (bench_cpt.py's worker).

Peak RSS is each child's own ``ru_maxrss`` (interpreter, libraries and model included).
Gemma 3's 262,144-token vocabulary makes its tied LM head 168M of its 268M weights (640 x
262,144), against 28M of SmolLM2's 135M (576 x 49,152): the head is where the difference
goes. Needs each profile's corpus and first target domain's data (``CPREC_PROFILE=demo-gemma3
python -m cprec_assets.demo --stage corpus``, then ``--stage sasrec --domain crime``: the
domain's users, SASRec and candidate sets, without training the LLM systems).

    .venv/bin/python benchmarks/bench_backbones.py [--profiles demo demo-gemma3]
        [--data-dir data] [--tokens 8192] [--steps 3] [--cases 16] [--threads <cores>]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_cpt.py, childproc.py

from childproc import run_child, self_peak_rss_mb  # noqa: E402

WORKERS = ("cpt", "score", "matmul")


def bench_profile(args: argparse.Namespace, name: str):
    from cprec_core.config import load_profile

    return dataclasses.replace(load_profile(name), data_dir=str(args.data_dir))


def check_inputs(args: argparse.Namespace, name: str) -> None:
    """Exits with the command that builds what a profile's workers read."""
    layout = bench_profile(args, name).layout
    for needed in (layout.corpus_parquet, layout.tokenizer_dir, layout.database):
        if not needed.exists():
            sys.exit(f"{needed}: not found; run CPREC_PROFILE={name} python -m cprec_assets.demo"
                     " --stage corpus, then --stage sasrec --domain crime (or pass --data-dir)")


def run_cpt(args: argparse.Namespace) -> dict:
    """The CPT trainer's step on a slice of the profile's corpus."""
    import pyarrow.parquet as pq
    import torch
    from bench_cpt import choose_slice, flops_per_token, model_structure, read_slice

    from cprec_core.layout import TrainedAdapter
    from cprec_core.training.cpt import CPTTrainer
    from cprec_core.training.loop import one_step

    torch.set_num_threads(args.threads)
    profile = bench_profile(args, args.profile)
    corpus_file = profile.layout.corpus_parquet
    cols = pq.read_table(corpus_file, columns=["doc_id", "kind", "n_tokens"]).to_pydict()
    corpus = read_slice(corpus_file, choose_slice(cols["doc_id"], cols["kind"],
                                                  cols["n_tokens"], args.tokens))
    trainer = CPTTrainer(profile, "ds_mix_shuffled",
                         run=TrainedAdapter(Path(tempfile.mkdtemp(prefix="bench-backbone-"))))
    trainer.setup(corpus=corpus, resume=False)
    plan = trainer.plan
    structure = model_structure(trainer.peft_model)
    rss_ready = self_peak_rss_mb()
    trainer.model.train()
    timed_tokens, timed_seconds = 0, 0.0
    for i in range(1 + args.steps):
        step = i % plan.total_steps
        started = time.perf_counter()
        loss = one_step(trainer, step, trainer.cfg.grad_clip)["loss"]
        seconds = time.perf_counter() - started
        print(f"  {args.profile} cpt step {i}: {plan.tokens(step)} tokens in {seconds:.2f} s,"
              f" loss {loss:.4f}{' (warm-up)' if i == 0 else ''}", flush=True)
        if i:
            timed_tokens += plan.tokens(step)
            timed_seconds += seconds
    flops = flops_per_token(structure, [len(x) for x in corpus.input_ids])
    head = 4 * structure["n_head"]  # per token, forward and input gradient
    return {"model": profile.model.name, "dtype": str(trainer.dtype).replace("torch.", ""),
            "tokens_per_s": timed_tokens / timed_seconds, "timed_tokens": timed_tokens,
            "flops_per_token": flops["total"], "head_share": head / flops["total"],
            "structure": structure, "rss_ready_mb": rss_ready,
            "vocab": trainer.peft_model.get_base_model().config.vocab_size}


def run_score(args: argparse.Namespace) -> dict:
    """The evaluation's likelihood scoring of 20 candidates per case, zero-shot."""
    import torch

    from workload import scoring_cases

    from cprec_core.data.db import connect
    from cprec_core.data.interactions import domain_slug
    from cprec_core.evaluation.llm import LLMScorer

    torch.set_num_threads(args.threads)
    profile = bench_profile(args, args.profile)
    slug = domain_slug(profile.data.target_domains[0])
    batch = profile.evaluation.batch_size
    with connect(profile.layout.database, read_only=True) as con:
        domain, samples, titles = scoring_cases(con, profile, slug, args.cases + batch)
    scorer = LLMScorer.load(profile, slug, "base")
    timed, warm = samples[:args.cases], samples[args.cases:] or samples[:batch]
    scorer.evaluate(warm, titles, batch, generate=False)
    started = time.perf_counter()
    scorer.evaluate(timed, titles, batch, generate=False)
    seconds = time.perf_counter() - started
    title_tokens = [len(scorer.tokenizer(f" {titles[c]}", add_special_tokens=False)["input_ids"])
                     for s in timed for c in s.candidates]
    return {"model": profile.model.name, "domain": domain, "cases": len(timed),
            "seconds_per_case": seconds / len(timed), "batch_size": batch,
            "title_tokens": sum(title_tokens) / len(title_tokens),
            "dtype": str(scorer.dtype).replace("torch.", "")}


def run_matmul(args: argparse.Namespace) -> dict:
    from bench_cpt import run_matmul as matmul

    return matmul(args, {})


def spawn(args: argparse.Namespace, worker: str, profile: str) -> dict:
    result_file = Path(tempfile.gettempdir()) / f"bench-backbones-{worker}-{os.getpid()}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker,
               "--profile", profile, "--result", str(result_file),
               "--data-dir", str(args.data_dir), "--tokens", str(args.tokens),
               "--steps", str(args.steps), "--cases", str(args.cases),
               "--threads", str(args.threads)]
    result, peak = run_child(command, result_file, f"{worker} {profile}")
    return {**result, "peak_rss_mb": peak}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profiles", nargs="+", default=["demo", "demo-gemma3"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--tokens", type=int, default=8192, help="CPT slice (default 8192)")
    parser.add_argument("--steps", type=int, default=3, help="timed CPT steps (default 3)")
    parser.add_argument("--cases", type=int, default=16, help="timed test cases (default 16)")
    parser.add_argument("--threads", type=int, default=cores)
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.tokens, args.steps, args.cases, args.threads) < 1:
        parser.error("--tokens, --steps, --cases and --threads must be positive")
    args.data_dir = Path(args.data_dir).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run = {"cpt": run_cpt, "score": run_score, "matmul": run_matmul}[args.worker]
        Path(args.result).write_text(json.dumps(run(args)))
        return 0
    for name in args.profiles:
        check_inputs(args, name)
    from cprec_core.provenance import processor
    from cprec_core.reporting import md_table

    peak = spawn(args, "matmul", args.profiles[0])["bf16_tflops"] * 1e12
    rows = []
    for name in args.profiles:
        cpt, score = spawn(args, "cpt", name), spawn(args, "score", name)
        s = cpt["structure"]
        rows.append((
            name, cpt["model"], f"{s['n_total'] / 1e6:.0f}M", f"{cpt['vocab']:,}",
            f"{s['n_head'] / 1e6:.0f}M", cpt["dtype"], f"{cpt['tokens_per_s']:,.0f}",
            f"{cpt['flops_per_token'] / 1e9:.2f}", f"{cpt['head_share']:.0%}",
            f"{cpt['tokens_per_s'] * cpt['flops_per_token'] / peak:.0%}",
            f"{cpt['peak_rss_mb'] / 1024:.2f}", f"{score['title_tokens']:.1f}",
            f"{score['seconds_per_case']:.3f}", f"{score['peak_rss_mb'] / 1024:.2f}"))
    print(f"{processor('cpu')}, {args.threads} threads, bf16 matmul peak {peak / 1e12:.2f}"
          f" TFLOP/s; CPT: {args.steps} timed steps on ~{args.tokens:,} corpus tokens;"
          f" scoring: {args.cases} test cases of 20 candidates, zero-shot, likelihood only")
    print(md_table(["profile", "model", "weights", "vocabulary", "LM head", "dtype",
                    "CPT tokens/s", "GFLOP/token", "LM head share", "MFU", "CPT peak GiB",
                    "tokens per title", "scoring s/case", "scoring peak GiB"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
