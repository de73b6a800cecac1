"""Benchmark: LLM scoring of a 20-candidate case, three ways, same model and cases, one run.

* ``naive``: one full forward of prompt + candidate per candidate (20 forwards per case, the
  prompt recomputed each time): ``naive_scorer.score_naive`` beside this file.
* ``likelihood``: our likelihood ranking: the prompt and all 20 continuations in one forward
  (plain causal attention over the prompt, a tree mask only on the continuation rows), LM
  head only where a continuation token is predicted (``LLMScorer.score``).
  Once a case at a time, and ``--batch-size`` cases per forward (padded, each under its own
  tree mask).
* ``likelihood + generation``: the same plus greedy answers for the paper's ValidRatio / HR@1,
  at most ``--max-new-tokens`` tokens: read off the tree forward where the answer follows a
  candidate title, decoded from the forward's KV cache otherwise: what the evaluation asset
  runs per case. The answers to decode are gathered over batches and decoded
  ``LLMScorer.decode_rows`` (64) rows at a time; once more before it, timed in the same run,
  with each batch's answers decoded on their own (at most ``--batch-size`` rows per step), and
  once with finished rows kept in the decoding batch until its longest answer ends (before
  ``LLMScorer.drop_finished``).
* the batched likelihood mode once more, timed first, with glibc's default heap: before
  ``keep_freed_heap`` (``cprec_core/evaluation/allocator.py``), which every other mode runs with.
  The page-fault column shows what it saves.

Cases: the first ``--cases`` test cases of ``--domain`` from the profile's ``candidate_sets``
(materialise the demo first: ``make demo``). Model: the SFT adapter ``--system`` (default
``cprec``, hybrid prompt) or ``base`` / ``cprec_zero_shot`` (text prompt), in the profile's
dtype (bf16 on this CPU). The first two cases of each mode are a warm-up and are not timed. The
scores of ``naive`` and ``likelihood`` are compared (max absolute difference, and whether
they rank the same candidate first).

    python benchmarks/bench_eval.py [--data-dir data] [--cases 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # naive_scorer.py beside this file

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cprec_core.config import load_profile  # noqa: E402
from cprec_core.data.db import connect  # noqa: E402
from cprec_core.data.domain_users import domain_for_slug  # noqa: E402
from cprec_core.evaluation.allocator import keep_freed_heap  # noqa: E402
from cprec_core.data.cases import load_cases  # noqa: E402
from cprec_core.evaluation.llm import LLMScorer  # noqa: E402
from cprec_core.prompts import Case  # noqa: E402
from cprec_core.reporting import md_table  # noqa: E402
from naive_scorer import score_naive  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--domain", default="crime")
    parser.add_argument("--system", default="cprec")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    profile = dataclasses.replace(load_profile(args.profile),
                                  data_dir=str(Path(args.data_dir).resolve()))
    # the scorer starts on glibc's default heap, for the first (baseline) mode
    profile = dataclasses.replace(profile, evaluation=dataclasses.replace(
        profile.evaluation, keep_freed_heap=False))
    with connect(profile.layout.database, read_only=True) as con:
        domain, _ = domain_for_slug(con, args.domain)
        cases = load_cases(con, domain, "test")
        titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                                  [domain]).fetchall())
    samples = [Case(int(u), h[-profile.sft.history:], [int(c) for c in cand], int(t))
               for u, h, cand, t in zip(cases.users, cases.histories, cases.candidates,
                                        cases.targets)][:args.cases + 2]
    scorer = LLMScorer.load(profile, args.domain, args.system, profile.sft.seeds[0])
    batch = args.batch_size
    default_heap = f"likelihood (tree mask, batch {batch}), glibc's default heap"

    def generate(ss, decode_rows: int, drop_finished: bool = True):
        scorer.decode_rows, scorer.drop_finished = decode_rows, drop_finished
        return scorer.evaluate(ss, titles, batch, generate=True, max_new_tokens=args.max_new_tokens)

    modes = {  # in this order: the default heap first, then keep_freed_heap for the rest
        default_heap: lambda ss: scorer.evaluate(ss, titles, batch, generate=False),
        "naive (20 forwards)": lambda ss: [score_naive(scorer, s, titles) for s in ss],
        "likelihood (tree mask, batch 1)": lambda ss: [r for s in ss for r in scorer.score([s], titles)],
        f"likelihood (tree mask, batch {batch})": lambda ss: scorer.evaluate(
            ss, titles, batch, generate=False),
        f"likelihood + generation (batch {batch}), each batch's answers decoded alone":
            lambda ss: generate(ss, decode_rows=1),
        f"likelihood + generation (batch {batch}), finished rows kept to the end":
            lambda ss: generate(ss, decode_rows=LLMScorer.decode_rows, drop_finished=False),
        f"likelihood + generation (batch {batch})": lambda ss: generate(
            ss, decode_rows=LLMScorer.decode_rows),
    }
    timings, faults, results = {}, {}, {}
    for name, fn in modes.items():
        if name == "naive (20 forwards)" and not keep_freed_heap():
            print("keep_freed_heap: not glibc here, so every mode runs on the default heap")
        fn(samples[:2])  # warm-up
        started, faulted = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        results[name] = fn(samples[2:])
        timings[name] = (time.perf_counter() - started) / (len(samples) - 2)
        faults[name] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted) / (
            len(samples) - 2)
    naive = np.stack([r.summed for r in results["naive (20 forwards)"]])
    tree = np.stack([r.summed for r in results[f"likelihood (tree mask, batch {batch})"]])
    same_top = float(np.mean(naive.argmax(1) == tree.argmax(1)))
    gen = results[f"likelihood + generation (batch {batch})"]
    valid = float(np.mean([r.chosen is not None for r in gen]))
    alone = results[f"likelihood + generation (batch {batch}), each batch's answers decoded alone"]
    same_answers = float(np.mean([a.answer == b.answer for a, b in zip(gen, alone)]))
    kept = results[f"likelihood + generation (batch {batch}), finished rows kept to the end"]
    same_dropped = float(np.mean([a.answer == b.answer for a, b in zip(gen, kept)]))
    base = timings["naive (20 forwards)"]
    print(f"{args.system} on {domain}, {len(samples) - 2} timed test cases, {scorer.dtype},"
          f" {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(md_table(["mode", "s / case", "cases / s", "speed-up vs naive", "page faults / case"],
                   [(n, f"{t:.3f}", f"{1 / t:.2f}", f"{base / t:.2f}x", f"{faults[n]:,.0f}")
                    for n, t in timings.items()]))
    print(f"\nnaive vs tree scores: mean |diff| {np.abs(naive - tree).mean():.4f},"
          f" max {np.abs(naive - tree).max():.4f} nats,"
          f" same top candidate in {same_top:.0%} of cases (bf16 rounding differs)")
    print(f"generation: ValidRatio {valid:.2f}; first answer {gen[0].answer!r}; the same"
          f" answer decoded alone and with other batches' rows in {same_answers:.0%} of cases,"
          f" with finished rows dropped and kept in {same_dropped:.0%}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
