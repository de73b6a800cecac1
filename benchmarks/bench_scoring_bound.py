"""Benchmark: how long a profile's LLM scoring must take on this machine, before training.

Every planned LLM system (zero-shot, each SFT system and seed) scores every test case of
every target domain, so the evaluation's work is fixed by the data and the protocol, not by
the training sizes. Counted on the real candidate sets (``cprec_core.evaluation.workload``):
the tokens per case and the FLOPs of the decoder's linear layers and LM head. Then, side by
side for each target domain, one run:

* ``matmul bound``: those FLOPs at this chip's measured rate for the same matmuls (the
  model's own weights, in the profile's dtype, on a batch of ``evaluation.batch_size``
  cases' rows). Attention, elementwise work and decoding come on top, so no code change to
  the forward gets under it.
* ``forward, measured``: the likelihood forward (``LLMScorer.evaluate`` without generation)
  timed on ``--cases`` real test cases of ``--system`` (default ``base``, which needs no
  training), projected to every case and system run by their tokens. Greedy decoding comes
  on top (up to ~25 % for adapters whose answers leave the titles; benchmarks/README.md).
* ``recorded``: the scoring seconds in ``evaluation_costs`` where the profile has been
  evaluated (possibly on another chip: its ``device`` column says which).

Needs the corpus and each target domain's data (``CPREC_PROFILE=<profile> python -m
cprec_assets.demo --stage corpus``, then ``--stage sasrec --domain <slug>``, a minute on 2
cores).

    python benchmarks/bench_scoring_bound.py [--profile demo | --config my.yaml] [--data-dir data]
        [--cases 32] [--system base]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # workload.py beside this file

import duckdb  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from cprec_core.config import load_config_file, load_profile  # noqa: E402
from cprec_core.data.db import connect  # noqa: E402
from cprec_core.data.domain_users import domain_for_slug  # noqa: E402
from cprec_core.data.interactions import domain_slug  # noqa: E402
from cprec_core.evaluation.llm import LLMScorer  # noqa: E402
from cprec_core.models.hybrid import add_placeholder_to_tokenizer  # noqa: E402
from cprec_core.provenance import processor  # noqa: E402
from cprec_core.reporting import md_table  # noqa: E402
from workload import case_tokens, domain_workload, model_flops, scoring_cases  # noqa: E402


def matmul_rate(model: torch.nn.Module, rows: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of the decoder's linear layers, each weight once in turn (so, as in a forward,
    they come from memory), on ``rows`` input rows: one forward's worth of matmuls."""
    weights = [m.weight.detach().to(dtype) for m in model.get_decoder().modules()
               if isinstance(m, torch.nn.Linear)]
    device = weights[0].device
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=dtype, device=device)
              for w in weights}
    flops = sum(2 * rows * w.shape[0] * w.shape[1] for w in weights)
    with torch.no_grad():
        for w in weights[:8]:  # warm-up
            F.linear(inputs[w.shape[1]], w)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            for w in weights:
                F.linear(inputs[w.shape[1]], w)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return flops * repeats / (time.perf_counter() - started)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _has_test_cases(con: duckdb.DuckDBPyConnection, slug: str) -> bool:
    if not con.execute("SELECT count(*) FROM information_schema.tables"
                       " WHERE table_name = 'candidate_sets'").fetchone()[0]:
        return False
    domain, _ = domain_for_slug(con, slug)
    return con.execute("SELECT count(*) FROM candidate_sets WHERE domain = ? AND split = 'test'",
                       [domain]).fetchone()[0] > 0


def recorded_minutes(con: duckdb.DuckDBPyConnection, domain: str) -> tuple[str, str]:
    """(minutes of LLM scoring on the test split, devices) from ``evaluation_costs``."""
    if not con.execute("SELECT count(*) FROM information_schema.tables"
                       " WHERE table_name = 'evaluation_costs'").fetchone()[0]:
        return "-", "-"
    seconds, runs, devices = con.execute(
        "SELECT sum(score_seconds), count(*), string_agg(DISTINCT device, ', ')"
        " FROM evaluation_costs WHERE domain = ? AND split = 'test'", [domain]).fetchone()
    return (f"{seconds / 60:.1f} ({runs} runs)", devices) if runs else ("-", "-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--config", help="a profile YAML file (docs/CONFIG.md), instead of --profile")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--system", default="base", help="timed for the measured forward")
    parser.add_argument("--cases", type=_positive, default=32,
                        help="per domain, for the measured forward")
    args = parser.parse_args(argv)
    profile = load_config_file(args.config) if args.config else load_profile(args.profile)
    profile = dataclasses.replace(profile, data_dir=str(Path(args.data_dir).resolve()))
    env = f"CPREC_CONFIG={args.config}" if args.config else f"CPREC_PROFILE={profile.name}"
    for needed in (profile.layout.database, profile.layout.tokenizer_dir):
        if not needed.exists():
            sys.exit(f"{needed}: not found; materialise the corpus and the target domains first"
                     f" ({env} python -m cprec_assets.demo --stage corpus,"
                     " then --stage sasrec --domain <slug>), or pass --data-dir")
    tokenizer = AutoTokenizer.from_pretrained(profile.layout.tokenizer_dir)
    add_placeholder_to_tokenizer(tokenizer)
    slugs = [domain_slug(d) for d in profile.data.target_domains]
    with connect(profile.layout.database, read_only=True) as con:
        missing = [slug for slug in slugs if not _has_test_cases(con, slug)]
        if missing:
            sys.exit(f"{profile.layout.database}: no test candidate sets for {missing}; materialise them"
                     f" ({env} python -m cprec_assets.demo --stage sasrec"
                     f" --domain {missing[0]})")
        work = {slug: domain_workload(con, profile, slug, tokenizer) for slug in slugs}
        recorded = {slug: recorded_minutes(con, work[slug].domain) for slug in slugs}

    scorer = LLMScorer.load(profile, slugs[0], args.system, profile.sft.seeds[0])
    per_token, per_head_row = model_flops(scorer.model)
    batch = profile.evaluation.batch_size
    first = work[slugs[0]]
    prompt = first.hybrid_prompt_tokens if scorer.hybrid else first.text_prompt_tokens
    rows = round(batch * (prompt + first.continuation_tokens))
    rate = matmul_rate(scorer.model, rows, scorer.dtype)

    table, totals = [], [0.0, 0.0, 0.0]  # bound s, projected s, FLOPs
    for slug in slugs:
        w = work[slug]
        flops = w.flops(per_token, per_head_row)
        # the measured forward, on this domain's first cases (the adapter's own domain for an
        # SFT system: its projector reads that domain's SASRec items)
        if slug != slugs[0] and scorer.hybrid:
            scorer = LLMScorer.load(profile, slug, args.system, profile.sft.seeds[0])
        with connect(profile.layout.database, read_only=True) as con:
            _, samples, titles = scoring_cases(con, profile, slug, args.cases + batch)
        timed = samples[:args.cases]  # fewer where the domain has fewer test cases
        scorer.evaluate(samples[len(timed):] or timed, titles, batch, generate=False)  # warm-up
        started = time.perf_counter()
        scorer.evaluate(timed, titles, batch, generate=False)
        per_case = (time.perf_counter() - started) / len(timed)
        # seconds per token of the timed cases, times every run's tokens on every case
        timed_tokens = sum(sum(case_tokens(scorer.tokenizer, sample, titles, scorer.hybrid,
                                           profile.corpus)) for sample in timed)
        projected = w.cases * per_case * len(timed) / timed_tokens * sum(
            runs * (prompt_tokens + w.continuation_tokens)
            for runs, prompt_tokens in ((w.hybrid_runs, w.hybrid_prompt_tokens),
                                        (w.text_runs, w.text_prompt_tokens)))
        totals[0] += flops / rate
        totals[1] += projected
        totals[2] += flops
        table.append((w.domain, f"{w.cases:,}", w.runs,
                      f"{w.hybrid_prompt_tokens:.0f} / {w.text_prompt_tokens:.0f}",
                      f"{w.continuation_tokens:.0f}", f"{flops / 1e15:.2f}",
                      f"{flops / rate / 60:.1f}", f"{per_case:.3g}", f"{projected / 60:.1f}",
                      *recorded[slug]))
    table.append(("all", "", "", "", "", f"{totals[2] / 1e15:.2f}", f"{totals[0] / 60:.1f}", "",
                  f"{totals[1] / 60:.1f}", "", ""))
    print(f"profile {profile.name}: {first.hybrid_runs} SFT system runs (hybrid prompt) and"
          f" {first.text_runs} zero-shot (text prompt) per domain; {scorer.dtype},"
          f" {torch.get_num_threads()} threads, {processor(str(scorer.device))}")
    print(f"linear layers {per_token / 1e6:.1f} MFLOP per token, LM head {per_head_row / 1e6:.1f}"
          f" MFLOP per row; this chip's matmul rate on a batch of {batch} cases ({rows:,} rows):"
          f" {rate / 1e9:.0f} GFLOP/s")
    print(md_table(["domain", "test cases", "system runs", "prompt tokens (hybrid / text)",
                    "title tokens", "PFLOP", "matmul bound (min)",
                    f"forward, {args.system} (s/case)", "forward, projected (min)",
                    "recorded (min)", "recorded on"], table))


if __name__ == "__main__":
    main()
