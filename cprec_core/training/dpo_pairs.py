"""Preference pairs for DPO, mined from the training windows by the SFT model.

    python -m cprec_core.training.dpo_pairs --profile demo --domain crime --system cprec_dpo

Each training window (a sliding-window sample of a user's train history, as SFT builds them,
with its own seeded draw of candidates: never the stored validation or test candidate
sets) is scored by the SFT adapter the policy will start from. Its pairs: chosen = the
target; rejected = the ``hard`` wrong candidates the SFT model ranks highest, plus
``random`` others drawn from the remaining wrong candidates. Each pair keeps the scores that
chose it: the SFT model's summed answer log-likelihoods of both answers, which are also the
DPO reference's (the reference is that same adapter, frozen), so DPO never runs a
reference forward.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cprec_core.cli import (add_domain_run_arguments, add_profile_arguments,
                            add_reporter_argument, profile_from_args, run_trainer)
from cprec_core.config import Profile
from cprec_core.data.db import connect
from cprec_core.data.domain_users import load_domain_data
from cprec_core.data.sources.base import file_sha256
from cprec_core.layout import TrainedAdapter
from cprec_core.progress import Progress, Reporter
from cprec_core.prompts import Case
from cprec_core.systems import system as registered
from cprec_core.training.sft import SFTError
from cprec_core.training.sft_samples import build_samples

PAIR_SCHEMA = pa.schema([
    ("window", pa.int32()), ("user", pa.int32()), ("history", pa.list_(pa.int32())),
    ("candidates", pa.list_(pa.int32())), ("chosen", pa.int32()), ("rejected", pa.int32()),
    ("kind", pa.string()),  # hard | random
    ("rejected_rank", pa.int32()),  # the rejected answer's rank by the SFT model (1 = top)
    ("chosen_rank", pa.int32()),
    ("ref_chosen", pa.float32()), ("ref_rejected", pa.float32()),  # summed log-likelihoods
    ("chosen_tokens", pa.int32()), ("rejected_tokens", pa.int32()),
])


class CandidateScorer(Protocol):
    """What mining needs of cprec_core.evaluation.llm.LLMScorer."""

    def evaluate(self, samples: list[Case], titles: dict[int, str], batch_size: int = 8,
                 generate: bool = True, max_new_tokens: int = 32, progress=None) -> list: ...

    def continuations(self, sample: Case, titles: dict[int, str]) -> list[list[int]]: ...


@dataclass(frozen=True)
class Rejected:
    item: int
    kind: str
    rank: int


def choose_rejected(summed: np.ndarray, candidates: list[int], target: int, hard: int,
                    random: int, rng: np.random.Generator) -> list[Rejected]:
    """The ``hard`` highest-scored wrong candidates, then ``random`` of the other wrong ones.
    Ties in score keep the candidates' order (a stable sort), so mining is deterministic."""
    order = np.argsort(-summed, kind="stable")
    ranked = [(candidates[i], rank) for rank, i in enumerate(order, start=1)]
    wrong = [(item, rank) for item, rank in ranked if item != target]
    out = [Rejected(item, "hard", rank) for item, rank in wrong[:hard]]
    rest = wrong[hard:]
    if random and rest:
        for i in sorted(rng.choice(len(rest), size=min(random, len(rest)), replace=False)):
            out.append(Rejected(rest[i][0], "random", rest[i][1]))
    return out


def mine_pairs(scorer: CandidateScorer, windows: list[Case], titles: dict[int, str],
               hard: int, random: int, seed: int, batch_size: int = 8,
               progress: Callable[[int, int], None] | None = None) -> pa.Table:
    """One row per pair (``PAIR_SCHEMA``), windows in order."""
    if hard < 0 or random < 0 or hard + random == 0:
        raise ValueError(f"need at least one rejected answer per window (hard={hard},"
                         f" random={random})")
    results = scorer.evaluate(windows, titles, batch_size=batch_size, generate=False,
                              progress=progress)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {name: [] for name in PAIR_SCHEMA.names}
    for w, (case, result) in enumerate(zip(windows, results)):
        summed = np.asarray(result.summed, dtype=np.float64)
        tokens = [len(c) for c in scorer.continuations(case, titles)]
        position = {item: k for k, item in enumerate(case.candidates)}
        t = position[case.target]
        chosen_rank = int((summed > summed[t]).sum()) + 1
        for rejected in choose_rejected(summed, case.candidates, case.target, hard, random, rng):
            r = position[rejected.item]
            for name, value in (("window", w), ("user", case.user), ("history", case.history),
                                ("candidates", case.candidates), ("chosen", case.target),
                                ("rejected", rejected.item), ("kind", rejected.kind),
                                ("rejected_rank", rejected.rank), ("chosen_rank", chosen_rank),
                                ("ref_chosen", summed[t]), ("ref_rejected", summed[r]),
                                ("chosen_tokens", tokens[t]), ("rejected_tokens", tokens[r])):
                rows[name].append(value)
    return pa.table(rows, schema=PAIR_SCHEMA)


def pair_summary(pairs: pa.Table) -> dict:
    """What the UI shows of a mining run: counts, how often the SFT model already ranks the
    target first, and the reference margin by kind of negative."""
    chosen = np.asarray(pairs.column("ref_chosen"))
    rejected = np.asarray(pairs.column("ref_rejected"))
    kinds = np.asarray(pairs.column("kind"))
    windows = np.asarray(pairs.column("window"))
    first = np.unique(windows, return_index=True)[1]
    out = {"pairs": int(len(pairs)), "windows": int(len(first)),
           "sft_hr@1 on windows": round(float(np.mean(
               np.asarray(pairs.column("chosen_rank"))[first] == 1)), 4) if len(first) else 0.0}
    for kind in ("hard", "random"):
        mask = kinds == kind
        out[f"{kind} pairs"] = int(mask.sum())
        if mask.any():
            out[f"{kind}: reference margin"] = round(float(np.mean(chosen[mask] - rejected[mask])), 3)
            out[f"{kind}: chosen above rejected"] = round(float(np.mean(chosen[mask] > rejected[mask])), 4)
    return out


def training_windows(profile: Profile, slug: str) -> tuple[list[Case], dict[int, str]]:
    """The domain's sliding-window samples with a draw of candidates of their own
    (``dpo.window_seed``), at most ``dpo.max_windows`` of them, and the item titles."""
    cfg, sft = profile.dpo, profile.sft
    with connect(profile.layout.database, read_only=True) as con:
        data = load_domain_data(con, slug)
        titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                                  [data.domain]).fetchall())
    windows = build_samples(data.histories, data.items, sft.history, sft.min_history,
                            sft.negatives, cfg.window_seed)
    if cfg.max_windows and len(windows) > cfg.max_windows:
        pick = sorted(np.random.default_rng(cfg.window_seed).choice(len(windows), cfg.max_windows,
                                                                   replace=False))
        windows = [windows[i] for i in pick]
    return windows, titles


def ensure_pairs(profile: Profile, slug: str, system: str, seed: int,
                 reporter: Reporter, run: TrainedAdapter | None = None) -> dict:
    """Mine the pairs of (system, domain, seed) unless the stored ones came from the same
    SFT adapter with the same settings; returns ``pairs.json``. ``run``: where they go
    when not the profile's run of the DPO system (a benchmark)."""
    from cprec_core.evaluation.llm import LLMScorer

    entry, cfg = registered(system), profile.dpo
    run = profile.layout.sft_run(system, slug, seed) if run is None else run
    source = profile.layout.sft_run(entry.sft_init, slug, seed)
    if not source.exists():
        raise SFTError(f"{source.adapter}: no {entry.sft_init} adapter for {slug!r} seed"
                       f" {seed}; train it first")
    settings = {"sft_fingerprint": source.read_manifest().fingerprint,
                "sft_adapter_sha256": file_sha256(source.adapter_weights),
                "hard_negatives": cfg.hard_negatives, "random_negatives": cfg.random_negatives,
                "max_windows": cfg.max_windows, "window_seed": cfg.window_seed,
                "history": profile.sft.history, "negatives": profile.sft.negatives}
    if run.pairs.is_file() and run.pairs_info.is_file():
        info = json.loads(run.pairs_info.read_text())
        if {k: info.get(k) for k in settings} == settings:
            reporter.log(f"{system}[{slug}] pairs: {info['summary']['pairs']} stored pairs"
                         " reused")
            return info
    windows, titles = training_windows(profile, slug)
    reporter.log(f"{system}[{slug}] mining pairs: {len(windows)} windows scored by"
                 f" {entry.sft_init} seed {seed}")
    scorer = LLMScorer.load(profile, slug, entry.sft_init, seed)
    progress = Progress(reporter.log, f"{system}[{slug}] mining", len(windows), "windows")
    pairs = mine_pairs(scorer, windows, titles, cfg.hard_negatives, cfg.random_negatives,
                       cfg.window_seed, profile.evaluation.batch_size,
                       lambda done, total: progress.update(done))
    del scorer
    gc.collect()
    run.path.mkdir(parents=True, exist_ok=True)
    staged = run.pairs.with_name(f".{run.pairs.name}.tmp")
    pq.write_table(pairs, staged)
    staged.replace(run.pairs)
    info = {**settings, "sft_system": entry.sft_init, "summary": pair_summary(pairs)}
    run.pairs_info.write_text(json.dumps(info, indent=2))
    reporter.log(f"{system}[{slug}] pairs: {info['summary']}")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = add_domain_run_arguments(add_reporter_argument(add_profile_arguments(
        argparse.ArgumentParser(description="Preference pairs for DPO, per domain"))),
        "cprec_dpo", "cprec_dpo or llara_dpo", "the SFT system's seeds")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)

    def work(reporter: Reporter) -> dict:
        entry = registered(args.system)
        if entry.kind != "dpo":
            raise SFTError(f"{args.system!r} is not a DPO system of cprec_core.systems")
        seeds = tuple(args.seed) if args.seed else profile.sft.seeds_for(entry.sft_init)
        infos = [ensure_pairs(profile, args.domain, args.system, seed, reporter) for seed in seeds]
        return {"finished": True, **infos[0]["summary"]}

    return run_trainer(work, (SFTError, ValueError, KeyError), args.reporter)  # KeyError: --system


if __name__ == "__main__":
    sys.exit(main())
