"""Score every system of a profile on a domain's fixed candidate sets.

Two tables in the profile's database:

* ``evaluation_cases``: one row per (split, system, seed, family, case): the target's rank
  among the 20 candidates (ranking families), or whether the greedy answer was valid and hit
  (``generation``), with a hash of the candidate list the system saw. The leaderboard's
  intervals and paired tests are computed from these rows, and the evaluation check compares
  the hashes with ``candidate_sets``.
* ``evaluation_results``: the aggregates per (split, system, seed, family, user subset):
  ``valid_ratio``, ``hr@1`` over all cases, ``hr@1 (valid)`` over valid answers (LLaRA's
  and CPRec's definition; equal to ``hr@1`` for ranking), HR@3/5 and NDCG@3/5.
* ``evaluation_choices``: what was decided on the validation split, per system and seed:
  the ranking family of each SFT system (``likelihood (sum)`` or ``(mean)``, from the
  trainer's validation scores), and for the ``fused`` system its classic partner and lambda.
  The leaderboard's headline for a system is the family chosen here.
* ``evaluation_costs``: what scoring each LLM system run cost (seconds to load it and to
  score the cases, greedy answers read off the likelihood forward or decoded, device with
  the chip's name, threads): the cost side of the leaderboard, and what a study's time budget is planned
  from (docs/RESULTS.md, "Compute").

Systems: random, popularity, item-kNN (domain and all domains), SASRec and GRU4Rec
(validation and test); on the test split, the LLM systems: ``base`` and ``cprec_zero_shot``
(text prompt, when ``evaluation.zero_shot``) and every SFT adapter of ``sft.systems`` for
each of its seeds, each by likelihood (sum and mean per token) and, with
``evaluation.generation``, greedy generation where the prompt lists the candidates; with
``evaluation.shuffled_ablation`` each hybrid system's first seed once more with its injected
vectors shuffled among items; with ``evaluation.fusion``, that system on the validation
split too, and the ``fused`` system (``fuse``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Callable, Collection, ContextManager

import duckdb
import numpy as np

from cprec_core.config import ConfigError, Profile
from cprec_core.data.db import atomic
from cprec_core.data.domain_users import domain_for_slug
from cprec_core.data.cases import Cases, load_cases
from cprec_core.evaluation.baselines import item_knn, popularity, sequential_scores
from cprec_core.metrics import ranking_report, ranks_from_scores
from cprec_core.progress import Log, Progress, Throttled, duration
from cprec_core.provenance import git_revision, processor
from cprec_core.reporting import md_table, query_table
from cprec_core.systems import (DPO_SYSTEMS, SHUFFLED_SUFFIX, ZERO_SHOT_SYSTEM_NAMES,
                                system as registered)
from cprec_core.training.next_item import load_next_item_model, trained_next_item_models

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluation_results (
    domain VARCHAR NOT NULL, split VARCHAR NOT NULL, system VARCHAR NOT NULL,
    seed INTEGER NOT NULL, family VARCHAR NOT NULL, subset VARCHAR NOT NULL,
    cases INTEGER NOT NULL, valid_ratio DOUBLE, "hr@1" DOUBLE, "hr@1 (valid)" DOUBLE,
    "hr@3" DOUBLE, "hr@5" DOUBLE, "ndcg@3" DOUBLE, "ndcg@5" DOUBLE,
    evaluated_at TIMESTAMP DEFAULT current_timestamp, git_revision VARCHAR);
CREATE TABLE IF NOT EXISTS evaluation_cases (
    domain VARCHAR NOT NULL, split VARCHAR NOT NULL, system VARCHAR NOT NULL,
    seed INTEGER NOT NULL, family VARCHAR NOT NULL, user_idx BIGINT NOT NULL,
    candidates_hash VARCHAR NOT NULL, rank INTEGER, valid BOOLEAN NOT NULL,
    hit BOOLEAN NOT NULL, answer VARCHAR);
CREATE TABLE IF NOT EXISTS evaluation_costs (
    domain VARCHAR NOT NULL, split VARCHAR NOT NULL, system VARCHAR NOT NULL,
    seed INTEGER NOT NULL, cases INTEGER NOT NULL, load_seconds DOUBLE NOT NULL,
    score_seconds DOUBLE NOT NULL, answers_read_off INTEGER, answers_decoded INTEGER,
    device VARCHAR, threads INTEGER, evaluated_at TIMESTAMP DEFAULT current_timestamp,
    git_revision VARCHAR);
CREATE TABLE IF NOT EXISTS evaluation_choices (
    domain VARCHAR NOT NULL, system VARCHAR NOT NULL, seed INTEGER NOT NULL,
    choice VARCHAR NOT NULL, value VARCHAR NOT NULL, basis VARCHAR);
"""
FUSED = "fused"
FUSION_PARTNERS = ("sasrec", "gru4rec")  # the classic systems the fused one may build on
# user activity (train items in the domain) and the test item's train popularity, terciles
SUBSETS = ("all", "sparse", "medium", "dense", "head", "torso", "tail")
RESULT_COLUMNS = ("domain", "split", "system", "seed", "family", "subset", "cases",
                  "valid_ratio", "hr@1", "hr@1 (valid)", "hr@3", "hr@5", "ndcg@3", "ndcg@5")
CASE_COLUMNS = ("domain", "split", "system", "seed", "family", "user_idx", "candidates_hash",
                "rank", "valid", "hit", "answer")
COST_COLUMNS = ("domain", "split", "system", "seed", "cases", "load_seconds", "score_seconds",
                "answers_read_off", "answers_decoded", "device", "threads", "git_revision")
COST_HEADER = ("domain", "system", "seeds", "cases", "s/case", "minutes", "answers decoded",
               "device x threads")  # the columns of ``scoring_costs``


@dataclass
class LLMRun:
    """One LLM system run (system, seed) on a domain's cases: the per-case results and what
    they cost."""

    cases: list  # CaseResult per case, in the order of the cases
    load_seconds: float
    score_seconds: float
    answers_read_off: int | None  # None when generation is off
    answers_decoded: int | None
    device: str
    threads: int


def candidates_hash(candidates) -> str:
    """What the check compares: the candidate list in its stored order."""
    return hashlib.sha1(",".join(str(int(c)) for c in candidates).encode()).hexdigest()[:16]


def classic_scores(con, profile: Profile, slug: str, cases: Cases, log: Log = print,
                   every_s: float | None = None) -> dict[tuple[str, int], np.ndarray]:
    """{(system, seed): scores (cases x candidates)} of every classic system and every
    trained seed of the next-item systems (SASRec, GRU4Rec and the text systems); each
    system's time goes to ``log`` (at most every ``every_s`` seconds, all of them in a
    closing line)."""
    rng = np.random.default_rng(0)

    def sequential(files) -> np.ndarray:
        model, index = load_next_item_model(files)
        return sequential_scores(model, index, cases, model.shape.max_len)

    scorers = {
        ("random", 0): lambda: rng.random(cases.candidates.shape),
        ("popularity", 0): lambda: popularity(con, cases),
        ("item-knn (domain)", 0): lambda: item_knn(con, cases, all_domains=False),
        ("item-knn (all domains)", 0): lambda: item_knn(con, cases, all_domains=True),
    }
    for name, seed, files in trained_next_item_models(profile, slug):
        scorers[(name, seed)] = lambda files=files: sequential(files)
    label = f"{slug} {cases.split}, {len(cases.users):,} cases"
    throttled = Throttled(log, every_s)
    scores, seconds = {}, {}
    for i, (key, score) in enumerate(scorers.items(), 1):
        started = time.perf_counter()
        scores[key] = score()
        seconds[key] = time.perf_counter() - started
        throttled(lambda: f"{label}: {_seeded(key)} scored in {duration(seconds[key])}"
                          f" ({i}/{len(scorers)} classic systems)")
    throttled(f"{label}: {len(scorers)} classic systems scored in"
              f" {duration(sum(seconds.values()))} ("
              + ", ".join(f"{_seeded(k)} {duration(v)}" for k, v in seconds.items()) + ")",
              force=True)
    return scores


def _seeded(key: tuple[str, int]) -> str:
    return key[0] + (f" seed {key[1]}" if key[1] else "")


def planned_llm_systems(profile: Profile) -> list[tuple[str, int]]:
    """(system, seed) of every LLM system the profile evaluates, trained or not: the
    zero-shot systems (with ``evaluation.zero_shot``), then ``sft.systems`` per seed, then
    ``dpo.systems`` per seed of the SFT system each starts from."""
    zero_shot = ZERO_SHOT_SYSTEM_NAMES if profile.evaluation.zero_shot else ()
    return [(name, 0) for name in zero_shot] + [
        (name, seed) for name in profile.sft.systems for seed in profile.sft.seeds_for(name)] + [
        (name, seed) for name in profile.dpo.systems
        for seed in profile.sft.seeds_for(registered(name).sft_init)]


def llm_systems(profile: Profile, slug: str, log=print) -> list[tuple[str, int]]:
    """(system, seed) of every planned LLM system whose weights exist; missing ones are
    logged."""
    systems, layout = [], profile.layout
    for name, seed in planned_llm_systems(profile):
        entry = registered(name)
        if entry.kind == "zero_shot" and entry.cpt_variant is None:
            systems.append((name, seed))
        elif entry.kind == "zero_shot":
            if layout.cpt_adapter(entry.cpt_variant).exists():
                systems.append((name, seed))
            else:
                log(f"{name}: no {entry.cpt_variant.upper()} CPT adapter, skipped")
        elif layout.sft_run(name, slug, seed).adapter.is_dir():
            systems.append((name, seed))
        else:
            log(f"{name} seed {seed}: no SFT adapter for {slug}, skipped")
    return systems


def planned_runs(profile: Profile, slug: str, log=print) -> list[tuple[str, int, bool]]:
    """(system, seed, shuffled) of every LLM scoring run on the test split: each trained
    system, and with ``shuffled_ablation`` each hybrid system's first seed shuffled."""
    systems = llm_systems(profile, slug, log)
    runs = [(name, seed, False) for name, seed in systems]
    if profile.evaluation.shuffled_ablation:
        firsts = dict.fromkeys(name for name, _ in systems
                               if registered(name).kind in ("sft", "dpo"))
        runs += [(name, next(s for n, s in systems if n == name), True) for name in firsts]
    return runs


def llm_results(titles: dict[int, str], profile: Profile, slug: str, cases: Cases,
                log=print, runs: list[tuple[str, int, bool]] | None = None,
                every_s: float | None = None) -> dict[tuple[str, int], LLMRun]:
    """{(system, seed): LLMRun} for every run of ``runs`` (default ``planned_runs``), each
    timed (load and scoring apart). A shuffled run's key is ``<system> (shuffled emb)``; it,
    and a system whose prompt does not list the candidates, is scored by likelihood only.

    Each run logs its loading, then its cases scored (time per case, time left: the cases
    left at the mean time per case so far, an underestimate as batches go from the
    shortest prompts to the longest) after the first batch and at most every ``every_s``
    seconds, and its total."""
    import torch

    from cprec_core.evaluation.allocator import release_freed_heap
    from cprec_core.evaluation.llm import LLMScorer

    samples = cases.prompt_cases(profile.sft.history)
    cfg, out = profile.evaluation, {}
    runs = planned_runs(profile, slug, log) if runs is None else runs
    for n, (name, seed, shuffled) in enumerate(runs, 1):
        torch.manual_seed(0)
        system = name + SHUFFLED_SUFFIX if shuffled else name
        label = f"{slug} {cases.split}: {system} seed {seed}"
        log(f"{label}: loading (LLM run {n}/{len(runs)})")
        loading = time.perf_counter()
        scorer = LLMScorer.load(profile, slug, name, seed,
                                shuffle_seed=cfg.seed if shuffled else None)
        # a greedy answer can name a candidate only when the prompt lists them
        generation = cfg.generation and not shuffled and scorer.listing
        started = time.perf_counter()
        log(f"{label}: loaded in {duration(started - loading)}, scoring {len(samples):,} cases"
            f" ({'likelihood and greedy generation' if generation else 'likelihood'})")
        progress = Progress(log, label, len(samples), "cases", every_s, first=True)
        scored = scorer.evaluate(samples, titles, cfg.batch_size, generation,
                                 cfg.max_new_tokens, lambda done, total: progress.update(done))
        out[(system, seed)] = LLMRun(
            scored, round(started - loading, 2), round(time.perf_counter() - started, 2),
            scorer.answers_read_off if generation else None,
            scorer.answers_decoded if generation else None,
            f"{scorer.device.type} ({processor(str(scorer.device))})", torch.get_num_threads())
        if generation:
            log(f"{label}: {scorer.answers_read_off} greedy answers read off the"
                f" likelihood forward, {scorer.answers_decoded} decoded")
        del scorer
        if cfg.keep_freed_heap:  # the next model starts from a small heap, not this one's peak
            release_freed_heap()
    return out


def chosen_scoring(profile: Profile, slug: str, system: str, seed: int) -> tuple[str, str]:
    """(family, why) of an SFT run: summed or mean likelihood, whichever ranked the trainer's
    validation sample better (cprec_core.training.sft); mean where none was recorded."""
    manifest = profile.layout.sft_run(system, slug, seed).manifest
    found = json.loads(manifest.read_text()).get("validation") if manifest.is_file() else None
    if not found:
        return "likelihood (mean)", "no validation scores recorded"
    return (f"likelihood ({found['scoring']})",
            f"validation HR@1 sum {found['hr@1 (sum)']:.3f}, mean {found['hr@1 (mean)']:.3f}"
            f" ({found['cases']} cases, step {found['step']})")


def zscore(scores: np.ndarray) -> np.ndarray:
    """Per case (row), the candidates' scores at zero mean and unit spread."""
    spread = scores.std(1, keepdims=True)
    return (scores - scores.mean(1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def fuse(classic: np.ndarray, llm: np.ndarray, lam: float) -> np.ndarray:
    """The fused system's scores: z(classic) + lambda * z(LLM), per case."""
    return zscore(classic) + lam * zscore(llm)


def pick_lambda(classic: np.ndarray, llm: np.ndarray, target_col: np.ndarray,
                lambdas) -> tuple[float, dict[float, float]]:
    """The lambda with the best HR@1 on the validation cases (the smallest among ties) and
    every lambda's HR@1."""
    hr = {float(lam): float((ranks_from_scores(fuse(classic, llm, lam), target_col) == 0).mean())
          for lam in sorted(lambdas)}
    return max(hr, key=lambda lam: (hr[lam], -lam)), hr


def _case_rows(domain, split, system, seed, family, cases: Cases, ranks=None, chosen=None,
               answers=None) -> list[tuple]:
    rows = []
    for i, user in enumerate(cases.users):
        h = candidates_hash(cases.candidates[i])
        if ranks is not None:
            rows.append((domain, split, system, seed, family, int(user), h, int(ranks[i]), True,
                         bool(ranks[i] == 0), None))
        else:
            valid = chosen[i] is not None
            rows.append((domain, split, system, seed, family, int(user), h, None, valid,
                         valid and chosen[i] == int(cases.targets[i]), answers[i]))
    return rows


def subset_masks(cases: Cases) -> dict[str, np.ndarray]:
    """Every case (``all``), the cases of each user-activity tercile and of each
    target-popularity tercile (cprec_core.data.cases), the empty ones left out."""
    activity, popularity = np.asarray(cases.activity), np.asarray(cases.popularity)
    masks = {"all": np.ones(len(activity), bool)}
    for subset in SUBSETS[1:]:
        masks[subset] = (activity == subset) | (popularity == subset)
    return {name: mask for name, mask in masks.items() if mask.any()}


def _aggregate(domain, split, system, seed, family, subsets: dict[str, np.ndarray], ranks=None,
               valid=None, hits=None) -> list[tuple]:
    rows = []
    for subset, keep in subsets.items():
        n = int(keep.sum())
        if ranks is not None:
            m = ranking_report(ranks[keep])
            rows.append((domain, split, system, seed, family, subset, n, 1.0, m["hr@1"],
                         m["hr@1"], m["hr@3"], m["hr@5"], m["ndcg@3"], m["ndcg@5"]))
        else:
            v, h = valid[keep], hits[keep]
            rows.append((domain, split, system, seed, family, subset, n, float(v.mean()),
                         float(h.mean()), float(h.sum() / v.sum()) if v.any() else None,
                         None, None, None, None))
    return rows


def chosen_llm_systems(profile: Profile, systems: Collection[str] | None) -> set[str] | None:
    """``systems`` checked against the profile's planned LLM systems (None: all of them)."""
    if systems is None:
        return None
    planned = list(dict.fromkeys(name for name, _ in planned_llm_systems(profile)))
    unknown = sorted(set(systems) - set(planned))
    if unknown:
        raise ConfigError(f"evaluation systems {unknown}: not LLM systems of profile"
                          f" {profile.name!r}; its LLM systems are {planned}")
    return set(systems)


def evaluate_domain(connect: Callable[[], ContextManager[duckdb.DuckDBPyConnection]],
                    profile: Profile, slug: str, systems: Collection[str] | None = None,
                    log=print, every_s: float | None = None) -> list[tuple]:
    """Score every system on ``slug``'s candidate sets; replaces the domain's earlier rows.

    ``systems`` names the LLM systems to score (default: every planned one). With a subset,
    only the classic systems' rows and those systems' rows (their shuffled runs, and the
    fused system's when the subset holds its LLM system) are replaced; the other LLM
    systems' rows stay. That adds a system, or re-scores a re-trained one, without paying
    again for LLM systems that took hours to score; ``()`` scores the classic systems only.

    ``connect()`` opens the profile's database. The connection is closed while the LLM
    systems are scored (minutes to hours), so other domains' runs can use the file meanwhile.
    Progress goes to ``log``: each classic system's time, each LLM run's cases scored and
    time left, at most every ``every_s`` seconds (cprec_core.progress.EVERY_S by default).
    """
    cfg = profile.evaluation
    subset = chosen_llm_systems(profile, systems)
    with_llm = subset is None or bool(subset)
    runs = [run for run in planned_runs(profile, slug, log)
            if subset is None or run[0] in subset] if with_llm else []
    with_fusion = bool(cfg.fusion) and (subset is None or cfg.fusion in subset)
    with connect() as con:
        domain, _ = domain_for_slug(con, slug)
        create_tables(con)
        splits = {split: load_cases(con, domain, split, cfg.max_cases, cfg.seed)
                  for split in ("valid", "test")}
        log(f"{slug}: {len(splits['valid'].users):,} validation and"
            f" {len(splits['test'].users):,} test cases")
        classic = {split: classic_scores(con, profile, slug, cases, log, every_s)
                   for split, cases in splits.items()}
        titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                                  [domain]).fetchall())
    results, case_rows, costs, choices = [], [], [], []
    first = {s: (s, getattr(profile, s).seeds[0]) for s in FUSION_PARTNERS}  # one seed fused
    partner = max((s for s in FUSION_PARTNERS if first[s] in classic["valid"]), default=None,
                  key=lambda s: float((ranks_from_scores(classic["valid"][first[s]],
                                                        splits["valid"].target_col) == 0).mean()))
    fusion = {}  # seed -> validation LLMRun of the fusion system
    if partner and with_fusion:
        seeds = [seed for name, seed in llm_systems(profile, slug, log) if name == cfg.fusion]
        if seeds:
            fusion = {seed: run for (_, seed), run in llm_results(
                titles, profile, slug, splits["valid"], log,
                [(cfg.fusion, seed, False) for seed in seeds], every_s).items()}
    for split, cases in splits.items():
        subsets = subset_masks(cases)
        target_col = cases.target_col
        for (system, seed), scores in classic[split].items():
            ranks = ranks_from_scores(scores, target_col)
            results += _aggregate(domain, split, system, seed, "ranking", subsets, ranks)
            case_rows += _case_rows(domain, split, system, seed, "ranking", cases, ranks)
        if not (with_llm and split == "test"):
            continue
        for seed, run in fusion.items():  # its validation scoring, a cost too
            costs.append((domain, "valid", cfg.fusion, seed, len(run.cases), run.load_seconds,
                          run.score_seconds, None, None, run.device, run.threads))
        llm = llm_results(titles, profile, slug, cases, log, runs, every_s)
        for (system, seed), run in llm.items():
            scored = run.cases
            costs.append((domain, split, system, seed, len(scored), run.load_seconds,
                          run.score_seconds, run.answers_read_off, run.answers_decoded,
                          run.device, run.threads))
            if registered(system.removesuffix(SHUFFLED_SUFFIX)).kind in ("sft", "dpo"):
                family, why = chosen_scoring(profile, slug, system.removesuffix(SHUFFLED_SUFFIX),
                                             seed)
                choices.append((domain, system, seed, "scoring", family, why))
            for family, attr in (("likelihood (sum)", "summed"), ("likelihood (mean)", "mean")):
                ranks = ranks_from_scores(np.stack([getattr(r, attr) for r in scored]), target_col)
                results += _aggregate(domain, split, system, seed, family, subsets, ranks)
                case_rows += _case_rows(domain, split, system, seed, family, cases, ranks)
            if run.answers_read_off is not None:  # generated (never for a shuffled run)
                chosen = [r.chosen for r in scored]
                valid = np.array([c is not None for c in chosen])
                hits = np.array([c == int(t) for c, t in zip(chosen, cases.targets)])
                results += _aggregate(domain, split, system, seed, "generation", subsets,
                                      valid=valid, hits=hits)
                case_rows += _case_rows(domain, split, system, seed, "generation", cases,
                                        chosen=chosen, answers=[r.answer for r in scored])
        for seed, valid_run in fusion.items():
            family, _ = chosen_scoring(profile, slug, cfg.fusion, seed)
            attr = "summed" if family == "likelihood (sum)" else "mean"
            llm_valid = np.stack([getattr(r, attr) for r in valid_run.cases])
            llm_test = np.stack([getattr(r, attr) for r in llm[(cfg.fusion, seed)].cases])
            lam, by_lambda = pick_lambda(classic["valid"][first[partner]], llm_valid,
                                         splits["valid"].target_col, cfg.fusion_lambdas)
            ranks = ranks_from_scores(fuse(classic[split][first[partner]], llm_test, lam),
                                      target_col)
            results += _aggregate(domain, split, FUSED, seed, "ranking", subsets, ranks)
            case_rows += _case_rows(domain, split, FUSED, seed, "ranking", cases, ranks)
            grid = ", ".join(f"{k:g}: {v:.3f}" for k, v in by_lambda.items())
            choices += [(domain, FUSED, seed, "classic", partner,
                         "the better of SASRec and GRU4Rec on validation HR@1"),
                        (domain, FUSED, seed, "llm", f"{cfg.fusion} {family}", ""),
                        (domain, FUSED, seed, "lambda", f"{lam:g}",
                         f"validation HR@1 by lambda: {grid}")]
    # every system whose rows this run owns: those written now, and the chosen ones even
    # where their weights are gone (their old rows would describe weights that no longer are)
    replaced = {r[2] for r in results} | {c[2] for c in costs} | {c[1] for c in choices}
    replaced |= {name + suffix for name in subset or () for suffix in ("", SHUFFLED_SUFFIX)}
    if with_fusion and partner:
        replaced.add(FUSED)
    with connect() as con:
        with atomic(con):  # the old rows are replaced as a whole or not at all
            for table in ("evaluation_results", "evaluation_cases", "evaluation_costs",
                          "evaluation_choices"):
                if subset is None:
                    con.execute(f"DELETE FROM {table} WHERE domain = ?", [domain])
                else:
                    con.execute(f"DELETE FROM {table} WHERE domain = ?"
                                " AND list_contains(?, system)", [domain, sorted(replaced)])
            columns = (*RESULT_COLUMNS, "git_revision")  # the code that scored them
            revision = git_revision()
            con.executemany(f"INSERT INTO evaluation_results ({', '.join(map(_q, columns))})"
                            f" VALUES ({', '.join('?' * len(columns))})",
                            [(*row, revision) for row in results])
            con.executemany(f"INSERT INTO evaluation_cases ({', '.join(map(_q, CASE_COLUMNS))})"
                            f" VALUES ({', '.join('?' * len(CASE_COLUMNS))})", case_rows)
            if choices:
                con.executemany("INSERT INTO evaluation_choices VALUES (?, ?, ?, ?, ?, ?)",
                                choices)
            if costs:  # none when only the classic systems were scored
                con.executemany(f"INSERT INTO evaluation_costs ({', '.join(COST_COLUMNS)})"
                                f" VALUES ({', '.join('?' * len(COST_COLUMNS))})",
                                [(*row, revision) for row in costs])
    return results


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The evaluation tables; a table of an older layout (derived data) is rebuilt."""
    found = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'evaluation_results'"
    ).fetchall()}
    if found and "hr@1 (valid)" not in found:
        con.execute("DROP TABLE evaluation_results")
    con.execute(SCHEMA)
    # added later: kept results get NULL (not recorded) instead of being dropped
    con.execute("ALTER TABLE evaluation_results ADD COLUMN IF NOT EXISTS git_revision VARCHAR")


def _q(name: str) -> str:
    return f'"{name}"'


def mismatched_candidates(con: duckdb.DuckDBPyConnection) -> int:
    """Scored cases whose candidate list differs from the stored candidate set (or whose set
    is gone): every system must be scored on exactly the same rows."""
    rows = con.execute("""
        SELECT e.domain, e.split, e.user_idx, e.candidates_hash, c.candidates
        FROM evaluation_cases e LEFT JOIN candidate_sets c USING (domain, split, user_idx)""").fetchall()
    return sum(cand is None or candidates_hash(cand) != h for _, _, _, h, cand in rows)


def scoring_costs(con: duckdb.DuckDBPyConnection, domain: str | None = None) -> list[tuple]:
    """Per (domain, system): seeds, cases per seed, seconds per case (scoring only, mean over
    seeds), minutes in all (loading and scoring, every seed), the share of greedy answers that
    needed decoding, device (with the chip's name) and threads. Empty when no LLM scoring
    time is stored (a database evaluated before ``evaluation_costs`` existed, or classic
    systems only)."""
    if not con.execute("SELECT count(*) FROM information_schema.tables"
                       " WHERE table_name = 'evaluation_costs'").fetchall()[0][0]:
        return []
    return con.execute("""
        SELECT domain, system, count(*) AS seeds, max(cases) AS cases,
               round(avg(score_seconds / cases), 3) AS "s/case",
               round(sum(load_seconds + score_seconds) / 60, 1) AS minutes,
               round(sum(answers_decoded) / nullif(sum(answers_decoded + answers_read_off), 0),
                     2) AS "answers decoded",
               string_agg(DISTINCT device || ' x' || threads, ', ') AS "device x threads"
        FROM evaluation_costs WHERE split = 'test' AND (? IS NULL OR domain = ?)
        GROUP BY domain, system ORDER BY domain, min(rowid)""",
                       [domain, domain]).fetchall()


def scoring_seconds(con: duckdb.DuckDBPyConnection, domain: str) -> float:
    """Seconds the domain's LLM system runs took in all, loading and scoring (0 if none)."""
    return con.execute("SELECT coalesce(sum(load_seconds + score_seconds), 0)"
                       " FROM evaluation_costs WHERE domain = ?", [domain]).fetchone()[0]


def evaluation_tables(con: duckdb.DuckDBPyConnection, domain: str) -> dict[str, str]:
    """The domain's evaluation as markdown: test results per system and family, HR@1 per
    user subset, the validation split, and what the LLM scoring cost."""
    results = query_table(con, """
        SELECT system, family, count(*) AS seeds, max(cases) AS cases,
               round(avg(valid_ratio), 3) AS ValidRatio, round(avg("hr@1"), 4) AS "HR@1",
               round(avg("hr@1 (valid)"), 4) AS "HR@1 (valid)",
               round(avg("hr@5"), 4) AS "HR@5", round(avg("ndcg@5"), 4) AS "NDCG@5"
        FROM evaluation_results WHERE domain = ? AND split = 'test' AND subset = 'all'
        GROUP BY system, family ORDER BY "HR@1" DESC""", [domain])
    subsets = query_table(con, """
        SELECT system, subset, max(cases) AS cases, count(*) AS seeds,
               round(avg("hr@1"), 4) AS "HR@1"
        FROM evaluation_results WHERE domain = ? AND split = 'test'
        AND family IN ('ranking', 'likelihood (mean)') AND subset != 'all'
        GROUP BY system, subset ORDER BY system, subset""", [domain])
    valid = query_table(con, """
        SELECT system, round("hr@1", 4) AS "HR@1", round("ndcg@5", 4) AS "NDCG@5"
        FROM evaluation_results WHERE domain = ? AND split = 'valid' AND subset = 'all'
        ORDER BY "HR@1" DESC""", [domain])
    costs = md_table(COST_HEADER[1:], [c[1:] for c in scoring_costs(con, domain)])
    choices = query_table(con, """
        SELECT system, seed, choice, value, basis FROM evaluation_choices WHERE domain = ?
        ORDER BY rowid""", [domain])
    return {"results": results, "by_user_subset": subsets, "validation": valid,
            "chosen_on_validation": choices, "scoring_cost": costs}


def dpo_format_drops(con: duckdb.DuckDBPyConnection, margin: float) -> list[tuple]:
    """(domain, DPO system, seed, its ValidRatio, its SFT system's) where DPO lowered the
    share of well-formed answers by more than ``margin`` (DPO is known to damage the format)."""
    pairs = [(s.name, s.sft_init) for s in DPO_SYSTEMS]
    if not pairs:
        return []
    return con.execute(f"""
        WITH g AS (SELECT domain, system, seed, valid_ratio FROM evaluation_results
                   WHERE family = 'generation' AND subset = 'all' AND split = 'test'),
             p(dpo, sft) AS (VALUES {", ".join(["(?, ?)"] * len(pairs))})
        SELECT d.domain, d.system, d.seed, round(d.valid_ratio, 3), round(s.valid_ratio, 3)
        FROM g d JOIN p ON d.system = p.dpo
        JOIN g s ON s.domain = d.domain AND s.system = p.sft AND s.seed = d.seed
        WHERE d.valid_ratio < s.valid_ratio - ?
        ORDER BY 1, 2, 3""", [x for pair in pairs for x in pair] + [margin]).fetchall()


def low_valid_ratios(con: duckdb.DuckDBPyConnection, floor: float) -> list[tuple]:
    """(domain, system, seed, valid_ratio) of generation results under ``floor``."""
    return con.execute("""
        SELECT domain, system, seed, round(valid_ratio, 3) FROM evaluation_results
        WHERE family = 'generation' AND subset = 'all' AND valid_ratio < ?
        ORDER BY domain, system, seed""", [floor]).fetchall()


def main(argv: list[str] | None = None) -> int:
    """``python -m cprec_core.evaluation.evaluate --profile study --domain crime
    [--system NAME ... | --classic-only]``: the evaluation asset's work without Dagster.
    ``--system`` scores only the named LLM systems, ``--classic-only`` none; either way the
    other LLM systems' rows stay. Rebuild the leaderboard afterwards (the ``leaderboard``
    asset, or ``python -m cprec_core.evaluation.leaderboard``)."""
    import argparse

    from cprec_core.cli import add_profile_arguments, profile_from_args, run_tool
    from cprec_core.data.db import connect

    parser = add_profile_arguments(argparse.ArgumentParser(description="evaluate one domain"))
    parser.add_argument("--domain", required=True, help="partition key, e.g. crime")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--system", action="append",
                       help="score only this LLM system (repeatable); the others' rows stay")
    which.add_argument("--classic-only", action="store_true",
                       help="score the classic systems only and keep the LLM systems' rows")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    systems = () if args.classic_only else args.system
    try:
        chosen_llm_systems(profile, systems)
    except ConfigError as exc:
        parser.error(str(exc))

    def work() -> None:
        rows = evaluate_domain(lambda: connect(profile.layout.database), profile, args.domain,
                               systems)
        print(f"{args.domain}: {len(rows)} result rows written to {profile.layout.database}")

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    raise SystemExit(main())
