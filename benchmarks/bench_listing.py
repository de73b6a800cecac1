"""Lever: the candidate listing in the ranking prompt of a ``*_rank`` system, its cost and
what it does to HR@1.

    python benchmarks/bench_listing.py [--profile study-rank] [--domain crime]
                                       [--system cprec_rank] [--seed 0]

The baseline is the profile's own trained and evaluated run of ``--system`` and ``--seed``
(``make study`` first). The script trains that run once more with the other listing setting
and nothing else changed (the same seed: the same samples, negatives and LoRA start), into
``data/<profile>/levers/listing/`` (never read by the evaluation), scores it on the same
test cases with the scoring family its validation chose, and prints both side by side:
training seconds per sample and tokens/s, scoring seconds per case, HR@1 with McNemar's
exact test on the paired cases. One seed: an indication of the lever's effect, not a
study's verdict. A finished variant is reused on a rerun; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from cprec_core.config import load_profile
from cprec_core.data.cases import load_cases
from cprec_core.data.db import connect
from cprec_core.data.domain_users import domain_for_slug
from cprec_core.evaluation.leaderboard import paired_test
from cprec_core.evaluation.llm import LLMScorer
from cprec_core.layout import LayoutError, RunManifest
from cprec_core.metrics import ranks_from_scores
from cprec_core.provenance import processor
from cprec_core.reporting import md_table
from cprec_core.training.sft import SFTTrainer


def scoring(manifest: RunManifest) -> str:
    """The family a run is ranked by: chosen on validation, else the mean (as the
    evaluation does, cprec_core.evaluation.evaluate.chosen_scoring)."""
    return (manifest.validation or {}).get("scoring", "mean")


def validation_hr1(manifest: RunManifest) -> float | None:
    found = manifest.validation
    return found[f"hr@1 ({found['scoring']})"] if found else None


def train_cost(manifest: RunManifest) -> tuple[float, float]:
    """(seconds per sample per epoch, tokens/s) of a finished SFT run."""
    seen = manifest.samples * (manifest.epochs or 1)
    return manifest.train_seconds / seen, manifest.tokens_per_second


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="study-rank")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--domain", default="crime")
    parser.add_argument("--system", default="cprec_rank")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    base = load_profile(args.profile, {"data_dir": args.data_dir})
    layout, cfg = base.layout, base.evaluation
    try:  # the layout checks the names before any path is built from them
        study_run = layout.sft_run(args.system, args.domain, args.seed)
        variant_run = layout.lever_run("listing", args.system, args.domain, args.seed)
    except LayoutError as exc:
        raise SystemExit(f"bench_listing: {exc}") from None
    if not study_run.exists():
        raise SystemExit(f"{study_run.path}: no trained run; run `make study` first")
    study = study_run.read_manifest()
    if study.objective != "rank":
        raise SystemExit(f"{args.system}: not a candidate-aware system (objective "
                         f"{study.objective!r}); the listing lever is theirs")
    listing = not study.listing
    profile = dataclasses.replace(base, sft=dataclasses.replace(
        base.sft, rank=dataclasses.replace(base.sft.rank, listing=listing)))

    if not variant_run.exists():
        variant_run.path.mkdir(parents=True, exist_ok=True)
        trainer = SFTTrainer(profile, args.domain, args.system, seed=args.seed, run=variant_run)
        trainer.setup()
        print(f"training {args.system} seed {args.seed} with listing={listing} into"
              f" {variant_run.path}, from step {trainer.start_step} of {trainer.total_steps}")
        if not trainer.train()["finished"]:
            raise SystemExit("training stopped before its last step; rerun to resume")
    variant = variant_run.read_manifest()

    with connect(layout.database, read_only=True) as con:
        domain, _ = domain_for_slug(con, args.domain)
        cases = load_cases(con, domain, "test", cfg.max_cases, cfg.seed)
        titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                                  [domain]).fetchall())
        family = f"likelihood ({scoring(study)})"
        rows = con.execute("""SELECT user_idx, hit FROM evaluation_cases WHERE domain = ?
                              AND split = 'test' AND system = ? AND seed = ? AND family = ?
                              ORDER BY user_idx""",
                           [domain, args.system, args.seed, family]).fetchall()
        cost = con.execute("""SELECT score_seconds / cases FROM evaluation_costs
                              WHERE domain = ? AND split = 'test' AND system = ? AND seed = ?""",
                           [domain, args.system, args.seed]).fetchone()
    study_hits = dict(rows)
    if set(study_hits) != {int(u) for u in cases.users}:
        raise SystemExit(f"the study's {args.system} rows do not cover the profile's"
                         f" {len(cases.users)} test cases: rerun its evaluation")

    torch.manual_seed(0)
    scorer = LLMScorer.load(profile, args.domain, args.system, args.seed, run=variant_run)
    started = time.perf_counter()
    scored = scorer.evaluate(cases.prompt_cases(profile.sft.history), titles, cfg.batch_size,
                             False, cfg.max_new_tokens)
    variant_score_seconds = (time.perf_counter() - started) / len(scored)
    attr = "summed" if scoring(variant) == "sum" else "mean"
    ranks = ranks_from_scores(np.stack([getattr(r, attr) for r in scored]), cases.target_col)
    variant_hits = np.asarray(ranks == 0)[:, None]
    baseline_hits = np.asarray([study_hits[int(u)] for u in cases.users], bool)[:, None]
    test = paired_test(variant_hits, baseline_hits, resamples=1000)

    print(f"\nlisting lever, {args.system} seed {args.seed} on {domain} ({args.profile},"
          f" {len(cases.users)} test cases), {processor()}, {torch.get_num_threads()} threads")
    arms = [(study, cost[0] if cost else float("nan"), float(baseline_hits.mean()), "study"),
            (variant, variant_score_seconds, float(variant_hits.mean()), "lever")]
    table = []
    for manifest, s_case, hr1, source in arms:
        s_sample, tok_s = train_cost(manifest)
        table.append(("listing" if manifest.listing else "no listing", source,
                      round(s_sample, 2), tok_s, round(s_case, 2), scoring(manifest),
                      validation_hr1(manifest), round(hr1, 3)))
    print(md_table(["prompt", "run", "train s/sample", "train tokens/s", "score s/case",
                    "scoring", "valid HR@1", "test HR@1"], table))
    print(f"\nHR@1 {'listing' if listing else 'no listing'} minus the study's: {test.diff:+.3f}"
          f" (95 % {test.low:+.3f} to {test.high:+.3f}), {test.a_only} vs {test.b_only}"
          f" discordant cases, McNemar p = {test.p_value:.3g}")


if __name__ == "__main__":
    main()
