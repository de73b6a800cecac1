"""Score every system of a profile on a domain's fixed candidate sets.

Four tables in the profile's database, one typed row class each (``ResultRow``, ``CaseRow``,
``ChoiceRow``, ``CostRow``):

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

``evaluate_domain`` runs in stages, each a function of the previous one's typed output:
``plan`` (which systems, which runs), ``score_classic`` (the only stage on an open database
before the write), ``fusion_partner``, ``score_llm`` (minutes to hours, the database
closed), ``aggregate`` (every row, in the order written) and ``write`` (one transaction).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Collection, ContextManager, Iterable, NamedTuple

import duckdb
import numpy as np

from cprec_core.config import ConfigError, Profile
from cprec_core.data.db import atomic
from cprec_core.data.domain_users import domain_for_slug
from cprec_core.data.interactions import domain_slug
from cprec_core.data.cases import Cases, load_cases
from cprec_core.evaluation.baselines import item_knn, popularity, sequential_scores
from cprec_core.metrics import one_se_choice, ranking_report, ranks_from_scores, reciprocal_ranks
from cprec_core.progress import Log, Progress, Throttled, duration
from cprec_core.provenance import git_revision, processor
from cprec_core.reporting import md_table, query_table
from cprec_core.systems import (DPO_SYSTEMS, SHUFFLES, ZERO_SHOT_SYSTEM_NAMES, unshuffled,
                                system as registered)
from cprec_core.training.next_item import load_next_item_model, trained_next_item_models
from cprec_core.training.residual import PARTNERS

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
RESIDUAL = "residual"  # the family a residual system ranks by (cprec_core.training.residual)
# user activity (train items in the domain) and the test item's train popularity, terciles
SUBSETS = ("all", "sparse", "medium", "dense", "head", "torso", "tail")
RESULT_COLUMNS = ("domain", "split", "system", "seed", "family", "subset", "cases",
                  "valid_ratio", "hr@1", "hr@1 (valid)", "hr@3", "hr@5", "ndcg@3", "ndcg@5")
CASE_COLUMNS = ("domain", "split", "system", "seed", "family", "user_idx", "candidates_hash",
                "rank", "valid", "hit", "answer")
COST_COLUMNS = ("domain", "split", "system", "seed", "cases", "load_seconds", "score_seconds",
                "answers_read_off", "answers_decoded", "device", "threads")
CHOICE_COLUMNS = ("domain", "system", "seed", "choice", "value", "basis")
TABLES = ("evaluation_results", "evaluation_cases", "evaluation_costs", "evaluation_choices")
LIKELIHOOD_FAMILIES = ("likelihood (sum)", "likelihood (mean)")  # how LLM systems rank
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


class _Row:
    """A row of one evaluation table: its fields in the table's column order."""

    __slots__ = ()

    def values(self) -> tuple:
        """The fields in column order, as the database takes them."""
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, slots=True)
class ResultRow(_Row):
    """An ``evaluation_results`` row (``RESULT_COLUMNS``): a system run's metrics on a subset."""

    domain: str
    split: str
    system: str
    seed: int
    family: str
    subset: str
    cases: int
    valid_ratio: float
    hr1: float
    hr1_valid: float | None  # HR@1 over the valid answers: None when there are none
    hr3: float | None = None  # the ranking metrics: None for generation
    hr5: float | None = None
    ndcg3: float | None = None
    ndcg5: float | None = None


@dataclass(frozen=True, slots=True)
class CaseRow(_Row):
    """An ``evaluation_cases`` row (``CASE_COLUMNS``): one case as a system run scored it."""

    domain: str
    split: str
    system: str
    seed: int
    family: str
    user_idx: int
    candidates_hash: str
    rank: int | None  # the target's rank (ranking families)
    valid: bool
    hit: bool
    answer: str | None  # the greedy answer (generation)


@dataclass(frozen=True, slots=True)
class CostRow(_Row):
    """An ``evaluation_costs`` row (``COST_COLUMNS``): what an LLM system run cost."""

    domain: str
    split: str
    system: str
    seed: int
    cases: int
    load_seconds: float
    score_seconds: float
    answers_read_off: int | None
    answers_decoded: int | None
    device: str
    threads: int


@dataclass(frozen=True, slots=True)
class ChoiceRow(_Row):
    """An ``evaluation_choices`` row (``CHOICE_COLUMNS``): what validation decided."""

    domain: str
    system: str
    seed: int
    choice: str
    value: str
    basis: str


@dataclass(frozen=True)
class Rows:
    """Rows of the four evaluation tables, each list in the order written."""

    results: list[ResultRow] = field(default_factory=list)
    cases: list[CaseRow] = field(default_factory=list)
    costs: list[CostRow] = field(default_factory=list)
    choices: list[ChoiceRow] = field(default_factory=list)

    @classmethod
    def join(cls, parts: Iterable[Rows]) -> Rows:
        parts = list(parts)
        return cls([r for p in parts for r in p.results], [r for p in parts for r in p.cases],
                    [r for p in parts for r in p.costs], [r for p in parts for r in p.choices])

    def systems(self) -> set[str]:
        return {r.system for r in (*self.results, *self.costs, *self.choices)}


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_domain`` wrote: the domain, as the database names it, and its rows."""

    domain: str
    rows: Rows


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
    system, seed = key
    return system + (f" seed {seed}" if seed else "")


def planned_llm_systems(profile: Profile) -> list[tuple[str, int]]:
    """(system, seed) of every LLM system the profile evaluates, trained or not: the
    zero-shot systems (with ``evaluation.zero_shot``), then ``sft.systems`` per seed, then
    ``dpo.systems`` per seed of the SFT system each starts from."""
    zero_shot = ZERO_SHOT_SYSTEM_NAMES if profile.evaluation.zero_shot else ()
    return [(name, 0) for name in zero_shot] + [
        (name, seed) for name in profile.sft.systems for seed in profile.sft.seeds_for(name)] + [
        (name, seed) for name in profile.dpo.systems
        for seed in profile.sft.seeds_for(registered(name).sft_init)]


def llm_domain(profile: Profile, slug: str) -> bool:
    """Whether domain ``slug`` gets the profile's LLM systems (``sft.domains``)."""
    return not profile.sft.domains or slug in {domain_slug(d) for d in profile.sft.domains}


def llm_systems(profile: Profile, slug: str, log=print) -> list[tuple[str, int]]:
    """(system, seed) of every planned LLM system whose weights exist; missing ones are
    logged. None in a domain outside ``sft.domains``."""
    if not llm_domain(profile, slug):
        log(f"{slug}: not in sft.domains {list(profile.sft.domains)}; no LLM system here")
        return []
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


def planned_runs(profile: Profile, slug: str, log=print) -> list[tuple[str, int, str | None]]:
    """(system, seed, shuffle) of every LLM scoring run on the test split: each trained
    system (shuffle None), and with ``shuffled_ablation`` each hybrid system's first seed
    with its injected vectors shuffled (systems.SHUFFLES): every one, or, for a system that
    reads candidate vectors, two runs, the history's shuffled and the candidates'."""
    systems = llm_systems(profile, slug, log)
    runs: list[tuple[str, int, str | None]] = [(name, seed, None) for name, seed in systems]
    if profile.evaluation.shuffled_ablation:
        firsts = dict.fromkeys(name for name, _ in systems
                               if registered(name).kind in ("sft", "dpo"))
        for name in firsts:
            seed = next(s for n, s in systems if n == name)
            parts = (("history", "candidates") if profile.sft.candidate_vectors_for(name)
                     else ("all",))
            runs += [(name, seed, part) for part in parts]
    return runs


def llm_results(titles: dict[int, str], profile: Profile, slug: str, cases: Cases,
                log=print, runs: list[tuple[str, int, str | None]] | None = None,
                every_s: float | None = None) -> dict[tuple[str, int], LLMRun]:
    """{(system, seed): LLMRun} for every run of ``runs`` (default ``planned_runs``), each
    timed (load and scoring apart). A shuffled run's key is the system's name with its
    suffix (``<system> (shuffled emb)``, systems.SHUFFLES); it,
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
        system = name + SHUFFLES[shuffled] if shuffled else name
        label = f"{slug} {cases.split}: {system} seed {seed}"
        log(f"{label}: loading (LLM run {n}/{len(runs)})")
        loading = time.perf_counter()
        scorer = LLMScorer.load(profile, slug, name, seed,
                                shuffle_seed=cfg.seed if shuffled else None,
                                shuffle=shuffled or "all")
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
    if registered(system).residual:
        return RESIDUAL, "a residual system: z(classic partner) + gate * z(summed likelihood)"
    run = profile.layout.sft_run(system, slug, seed)
    found = run.read_manifest().validation if run.manifest.is_file() else None
    if not found:
        return "likelihood (mean)", "no validation scores recorded"
    if "mrr (sum)" in found:  # runs trained before MRR was recorded chose on HR@1
        why = (f"validation MRR sum {found['mrr (sum)']:.3f}, mean {found['mrr (mean)']:.3f};"
               " the mean unless the sum is better by more than one standard error")
    else:
        why = f"validation HR@1 sum {found['hr@1 (sum)']:.3f}, mean {found['hr@1 (mean)']:.3f}"
    return f"likelihood ({found['scoring']})", f"{why} ({found['cases']} cases, step {found['step']})"


def zscore(scores: np.ndarray) -> np.ndarray:
    """Per case (row), the candidates' scores at zero mean and unit spread."""
    spread = scores.std(1, keepdims=True)
    return (scores - scores.mean(1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def fuse(classic: np.ndarray, llm: np.ndarray, lam: float) -> np.ndarray:
    """The fused system's scores: z(classic) + lambda * z(LLM), per case."""
    return zscore(classic) + lam * zscore(llm)


def pick_lambda(classic: np.ndarray, llm: np.ndarray, target_col: np.ndarray,
                lambdas) -> tuple[float, dict[float, float]]:
    """The lambda with the best MRR on every validation case, unless the smallest lambda
    (0: the classic model alone) is within one standard error of it (metrics.one_se_choice),
    and every lambda's MRR. HR@1 on a hundred cases moved the pick by one case."""
    rr = {float(lam): reciprocal_ranks(fuse(classic, llm, lam), target_col)
          for lam in sorted(lambdas)}
    lam, mrr = one_se_choice(rr, min(rr))
    return lam, mrr


def subset_masks(cases: Cases) -> dict[str, np.ndarray]:
    """Every case (``all``), the cases of each user-activity tercile and of each
    target-popularity tercile (cprec_core.data.cases), the empty ones left out."""
    activity, popularity = np.asarray(cases.activity), np.asarray(cases.popularity)
    masks = {"all": np.ones(len(activity), bool)}
    for subset in SUBSETS[1:]:
        masks[subset] = (activity == subset) | (popularity == subset)
    return {name: mask for name, mask in masks.items() if mask.any()}


def ranking_rows(cases: Cases, subsets: dict[str, np.ndarray], system: str, seed: int,
                 family: str, ranks: np.ndarray) -> Rows:
    """A ranking's rows: the target's rank per case, and its metrics per user subset (every
    answer counts as valid, so ``hr@1 (valid)`` is ``hr@1``)."""
    key = (cases.domain, cases.split, system, seed, family)
    results = []
    for subset, keep in subsets.items():
        m = ranking_report(ranks[keep])
        results.append(ResultRow(*key, subset, int(keep.sum()), 1.0, m["hr@1"], m["hr@1"],
                                 m["hr@3"], m["hr@5"], m["ndcg@3"], m["ndcg@5"]))
    case_rows = [CaseRow(*key, int(user), candidates_hash(candidates), int(rank), True,
                         bool(rank == 0), None)
                 for user, candidates, rank in zip(cases.users, cases.candidates, ranks)]
    return Rows(results, case_rows)


def generation_rows(cases: Cases, subsets: dict[str, np.ndarray], system: str, seed: int,
                    run: LLMRun) -> Rows:
    """Greedy generation's rows: each answer and the candidate it names (None: invalid), and
    per user subset the share of valid answers, HR@1 over all cases and over valid ones."""
    key = (cases.domain, cases.split, system, seed, "generation")
    chosen = [r.chosen for r in run.cases]
    valid = np.array([c is not None for c in chosen])
    hits = np.array([c == int(t) for c, t in zip(chosen, cases.targets)])
    results = []
    for subset, keep in subsets.items():
        v, h = valid[keep], hits[keep]
        results.append(ResultRow(*key, subset, int(keep.sum()), float(v.mean()), float(h.mean()),
                                 float(h.sum() / v.sum()) if v.any() else None))
    case_rows = [CaseRow(*key, int(user), candidates_hash(candidates), None, c is not None,
                         c is not None and c == int(target), r.answer)
                 for user, candidates, target, c, r in zip(
                     cases.users, cases.candidates, cases.targets, chosen, run.cases)]
    return Rows(results, case_rows)


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


@dataclass(frozen=True)
class Scope:
    """What one evaluation scores: the LLM systems named (None: every one), their runs on the
    test split, and whether the fused system is rebuilt."""

    systems: set[str] | None
    runs: list[tuple[str, int, bool]]
    fusion: bool

    @property
    def with_llm(self) -> bool:
        return self.systems is None or bool(self.systems)


def plan(profile: Profile, slug: str, systems: Collection[str] | None, log: Log) -> Scope:
    """The scope of ``systems``, checked (``()``: the classic systems only)."""
    chosen, fusion = chosen_llm_systems(profile, systems), profile.evaluation.fusion
    runs = []
    if chosen is None or chosen:
        runs = [(name, seed, shuffled) for name, seed, shuffled in planned_runs(profile, slug, log)
                if chosen is None or name in chosen]
    return Scope(chosen, runs, bool(fusion) and (chosen is None or fusion in chosen))


@dataclass(frozen=True)
class ClassicScores:
    """A domain's cases per split and every classic system's scores on them, with what the
    LLM systems read from the database (item titles), so the connection can close."""

    domain: str
    splits: dict[str, Cases]  # valid, test
    scores: dict[str, dict[tuple[str, int], np.ndarray]]  # split -> (system, seed) -> scores
    titles: dict[int, str]


def score_classic(con: duckdb.DuckDBPyConnection, profile: Profile, slug: str, log: Log,
                  every_s: float | None) -> ClassicScores:
    """Stage 1, on the open database: the cases and the classic systems' scores."""
    cfg = profile.evaluation
    domain, _ = domain_for_slug(con, slug)
    create_tables(con)
    splits = {split: load_cases(con, domain, split, cfg.max_cases, cfg.seed)
              for split in ("valid", "test")}
    log(f"{slug}: {len(splits['valid'].users):,} validation and"
        f" {len(splits['test'].users):,} test cases")
    scores = {split: classic_scores(con, profile, slug, cases, log, every_s)
              for split, cases in splits.items()}
    titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                              [domain]).fetchall())
    return ClassicScores(domain, splits, scores, titles)


def fusion_partner(profile: Profile, classic: ClassicScores) -> tuple[str, int] | None:
    """(system, first seed) of the classic system the fused one builds on: of SASRec and
    GRU4Rec, the one with the better validation MRR, SASRec on ties (None when neither was
    trained); the residual systems choose theirs the same way when they train."""
    valid = classic.splits["valid"]
    firsts = [(name, getattr(profile, name).seeds[0]) for name in PARTNERS]

    def mrr(key: tuple[str, int]) -> float:
        return float(reciprocal_ranks(classic.scores["valid"][key], valid.target_col).mean())

    return max((key for key in firsts if key in classic.scores["valid"]), key=mrr, default=None)


@dataclass(frozen=True)
class LLMScores:
    """The LLM runs: on the test split per (system, seed), and the fusion system's on the
    validation split per seed (what lambda is picked on)."""

    test: dict[tuple[str, int], LLMRun]
    fusion_valid: dict[int, LLMRun]


def score_llm(profile: Profile, slug: str, scope: Scope, classic: ClassicScores,
              partner: tuple[str, int] | None, log: Log, every_s: float | None) -> LLMScores:
    """Stage 2, with the database closed (minutes to hours): the fusion system on the
    validation split where the fused system is built, then every run of ``scope``."""
    fusion, valid = profile.evaluation.fusion, {}
    if partner and scope.fusion:
        seeds = [seed for name, seed in llm_systems(profile, slug, log) if name == fusion]
        if seeds:
            valid = {seed: run for (_, seed), run in llm_results(
                classic.titles, profile, slug, classic.splits["valid"], log,
                [(fusion, seed, False) for seed in seeds], every_s).items()}
    test = llm_results(classic.titles, profile, slug, classic.splits["test"], log, scope.runs,
                       every_s) if scope.with_llm else {}
    return LLMScores(test, valid)


def cost_row(cases: Cases, system: str, seed: int, run: LLMRun, answers: bool = True) -> CostRow:
    """What the run cost; ``answers=False`` leaves out how its greedy answers were read."""
    return CostRow(cases.domain, cases.split, system, seed, len(run.cases), run.load_seconds,
                   run.score_seconds, run.answers_read_off if answers else None,
                   run.answers_decoded if answers else None, run.device, run.threads)


def likelihoods(run: LLMRun, family: str) -> np.ndarray:
    """(cases, candidates) likelihoods of ``family``: summed, or mean per token."""
    return np.stack([r.summed if family == "likelihood (sum)" else r.mean for r in run.cases])


def llm_run_rows(profile: Profile, slug: str, cases: Cases, subsets: dict[str, np.ndarray],
                 system: str, seed: int, run: LLMRun,
                 classic: dict[tuple[str, int], np.ndarray]) -> Rows:
    """A test run's rows: its cost, the scoring family validation chose (SFT and DPO systems),
    its rankings by summed and by mean likelihood (and a residual system's own, on the
    ``classic`` scores of its partner), and its greedy answers where it made any."""
    trained = unshuffled(system)
    choices = []
    if registered(trained).kind in ("sft", "dpo"):
        family, why = chosen_scoring(profile, slug, trained, seed)
        choices.append(ChoiceRow(cases.domain, system, seed, "scoring", family, why))
    parts = [Rows(costs=[cost_row(cases, system, seed, run)], choices=choices)]
    for family in LIKELIHOOD_FAMILIES:
        ranks = ranks_from_scores(likelihoods(run, family), cases.target_col)
        parts.append(ranking_rows(cases, subsets, system, seed, family, ranks))
    if registered(trained).residual:
        parts.append(residual_rows(profile, slug, cases, subsets, system, seed, run, classic))
    if run.answers_read_off is not None:  # generated (never for a shuffled run)
        parts.append(generation_rows(cases, subsets, system, seed, run))
    return Rows.join(parts)


def residual_rows(profile: Profile, slug: str, cases: Cases, subsets: dict[str, np.ndarray],
                  system: str, seed: int, run: LLMRun,
                  classic: dict[tuple[str, int], np.ndarray]) -> Rows:
    """A residual system's ranking (cprec_core.training.residual): z(its partner's scores)
    + gate * z(summed likelihood), partner and gate as its run recorded them; the partner
    and gate as choices."""
    run_files = profile.layout.sft_run(unshuffled(system), slug, seed)
    record = run_files.read_manifest().residual
    if not record:
        raise ValueError(f"{run_files.manifest}: a residual system's run without its partner"
                         " and gate (field 'residual'); train it again")
    key = (record["partner"], int(record["partner_seed"]))
    if key not in classic:
        raise ValueError(f"{run_files.manifest}: its classic partner {key[0]} seed {key[1]}"
                         f" is not trained for {slug}; materialise {key[0]}")
    gate = float(record["gate"])
    ranks = ranks_from_scores(fuse(classic[key], likelihoods(run, "likelihood (sum)"), gate),
                              cases.target_col)
    mrr = ", ".join(f"{k} {v:.3f}" for k, v in record.get("partner_valid_mrr", {}).items())
    choices = [ChoiceRow(cases.domain, system, seed, "classic", key[0],
                         f"the better of SASRec and GRU4Rec by validation MRR ({mrr})"),
               ChoiceRow(cases.domain, system, seed, "gate", f"{gate:.4g}",
                         record.get("kept", "learned in the candidate loss from 0"))]
    return Rows.join([ranking_rows(cases, subsets, system, seed, RESIDUAL, ranks),
                      Rows(choices=choices)])


def fused_rows(profile: Profile, slug: str, classic: ClassicScores, partner: tuple[str, int],
               subsets: dict[str, np.ndarray], seed: int, valid: LLMRun, test: LLMRun) -> Rows:
    """The fused system of one seed of the fusion system: lambda picked on the validation
    split, the test split ranked, and what was chosen."""
    cfg = profile.evaluation
    family, _ = chosen_scoring(profile, slug, cfg.fusion, seed)
    valid_cases, cases = classic.splits["valid"], classic.splits["test"]
    lam, by_lambda = pick_lambda(classic.scores["valid"][partner], likelihoods(valid, family),
                                 valid_cases.target_col, cfg.fusion_lambdas)
    ranks = ranks_from_scores(fuse(classic.scores["test"][partner], likelihoods(test, family),
                                   lam), cases.target_col)
    grid = ", ".join(f"{k:g}: {v:.3f}" for k, v in by_lambda.items())
    name, _ = partner
    choices = [ChoiceRow(cases.domain, FUSED, seed, "classic", name,
                         "the better of SASRec and GRU4Rec by validation MRR"),
               ChoiceRow(cases.domain, FUSED, seed, "llm", f"{cfg.fusion} {family}", ""),
               ChoiceRow(cases.domain, FUSED, seed, "lambda", f"{lam:g}",
                         f"validation MRR by lambda ({len(valid_cases.users)} cases; the"
                         f" smallest within one standard error of the best): {grid}")]
    return Rows.join([ranking_rows(cases, subsets, FUSED, seed, "ranking", ranks),
                      Rows(choices=choices)])


def aggregate(profile: Profile, slug: str, classic: ClassicScores, llm: LLMScores,
              partner: tuple[str, int] | None) -> Rows:
    """Stage 3: every row, in the order written: the classic systems per split, the fusion
    system's validation cost, each LLM run on the test split, then the fused system."""
    parts = []
    for split, cases in classic.splits.items():
        subsets = subset_masks(cases)
        parts += [ranking_rows(cases, subsets, system, seed, "ranking",
                               ranks_from_scores(scores, cases.target_col))
                  for (system, seed), scores in classic.scores[split].items()]
    valid, test = classic.splits["valid"], classic.splits["test"]
    subsets, fusion = subset_masks(test), profile.evaluation.fusion
    parts += [Rows(costs=[cost_row(valid, fusion, seed, run, answers=False)])
              for seed, run in llm.fusion_valid.items()]
    parts += [llm_run_rows(profile, slug, test, subsets, system, seed, run,
                           classic.scores["test"])
              for (system, seed), run in llm.test.items()]
    parts += [fused_rows(profile, slug, classic, partner, subsets, seed, run,
                         llm.test[(fusion, seed)]) for seed, run in llm.fusion_valid.items()]
    return Rows.join(parts)


def owned_systems(scope: Scope, rows: Rows, partner: tuple[str, int] | None) -> set[str] | None:
    """The systems whose earlier rows this evaluation replaces (None: the whole domain's):
    those written now, and the named ones even where their weights are gone (their old rows
    would describe weights that no longer are)."""
    if scope.systems is None:
        return None
    owned = rows.systems() | {name + suffix for name in scope.systems
                              for suffix in ("", *SHUFFLES.values())}
    if scope.fusion and partner:
        owned.add(FUSED)
    return owned


def write(con: duckdb.DuckDBPyConnection, domain: str, rows: Rows, owned: set[str] | None) -> None:
    """Stage 4: the domain's earlier rows (of the ``owned`` systems only, unless None) replaced
    by ``rows``, as a whole or not at all; results and costs name the code that scored them."""
    revision = git_revision()
    with atomic(con):
        for table in TABLES:
            if owned is None:
                con.execute(f"DELETE FROM {table} WHERE domain = ?", [domain])
            else:
                con.execute(f"DELETE FROM {table} WHERE domain = ?"
                            " AND list_contains(?, system)", [domain, sorted(owned)])
        _insert(con, "evaluation_results", (*RESULT_COLUMNS, "git_revision"),
                [(*row.values(), revision) for row in rows.results])
        _insert(con, "evaluation_cases", CASE_COLUMNS, [row.values() for row in rows.cases])
        if rows.choices:
            _insert(con, "evaluation_choices", CHOICE_COLUMNS,
                    [row.values() for row in rows.choices])
        if rows.costs:  # none when only the classic systems were scored
            _insert(con, "evaluation_costs", (*COST_COLUMNS, "git_revision"),
                    [(*row.values(), revision) for row in rows.costs])


def _insert(con: duckdb.DuckDBPyConnection, table: str, columns, rows: list[tuple]) -> None:
    con.executemany(f"INSERT INTO {table} ({', '.join(map(_q, columns))})"
                    f" VALUES ({', '.join('?' * len(columns))})", rows)


def evaluate_domain(connect: Callable[[], ContextManager[duckdb.DuckDBPyConnection]],
                    profile: Profile, slug: str, systems: Collection[str] | None = None,
                    log: Log = print, every_s: float | None = None) -> Evaluation:
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
    scope = plan(profile, slug, systems, log)
    with connect() as con:
        classic = score_classic(con, profile, slug, log, every_s)
    partner = fusion_partner(profile, classic)
    llm = score_llm(profile, slug, scope, classic, partner, log, every_s)
    rows = aggregate(profile, slug, classic, llm, partner)
    with connect() as con:
        write(con, classic.domain, rows, owned_systems(scope, rows, partner))
    return Evaluation(classic.domain, rows)


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


class SystemCost(NamedTuple):
    """A ``scoring_costs`` row, a row of a ``COST_HEADER`` table: one LLM system's scoring
    on one domain's test split, all its seeds."""

    domain: str
    system: str
    seeds: int
    cases: int  # per seed
    seconds_per_case: float  # scoring alone, mean over seeds
    minutes: float  # loading and scoring, every seed
    answers_decoded: float | None  # the share of greedy answers decoded step by step
    devices: str  # device (the chip's name) x threads


def scoring_costs(con: duckdb.DuckDBPyConnection,
                  domain: str | None = None) -> list[SystemCost]:
    """Per (domain, system): seeds, cases per seed, seconds per case (scoring only, mean over
    seeds), minutes in all (loading and scoring, every seed), the share of greedy answers that
    needed decoding, device (with the chip's name) and threads. Empty when no LLM scoring
    time is stored (a database evaluated before ``evaluation_costs`` existed, or classic
    systems only)."""
    if not con.execute("SELECT count(*) FROM information_schema.tables"
                       " WHERE table_name = 'evaluation_costs'").fetchall()[0][0]:
        return []
    rows = con.execute("""
        SELECT domain, system, count(*) AS seeds, max(cases) AS cases,
               round(avg(score_seconds / cases), 3) AS "s/case",
               round(sum(load_seconds + score_seconds) / 60, 1) AS minutes,
               round(sum(answers_decoded) / nullif(sum(answers_decoded + answers_read_off), 0),
                     2) AS "answers decoded",
               string_agg(DISTINCT device || ' x' || threads, ', ') AS "device x threads"
        FROM evaluation_costs WHERE split = 'test' AND (? IS NULL OR domain = ?)
        GROUP BY domain, system ORDER BY domain, min(rowid)""",
                       [domain, domain]).fetchall()
    return [SystemCost(*row) for row in rows]


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
    # the domain column left out: these are the one domain's
    costs = md_table(COST_HEADER[1:], [cost[1:] for cost in scoring_costs(con, domain)])
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
        evaluated = evaluate_domain(lambda: connect(profile.layout.database), profile, args.domain,
                                    systems)
        print(f"{args.domain}: {len(evaluated.rows.results)} result rows written to"
              f" {profile.layout.database}")

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    raise SystemExit(main())
