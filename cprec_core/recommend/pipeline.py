"""The two-stage pipeline: retrieve the top N of a domain's items with the better classic
model, re-rank them with the best LLM system (a residual system where one is trained, else
the fused score where the evaluation fused one), keep the top k.

Every choice is made on validation data, never on test cases: the retrieval model and seed
(SASRec, GRU4Rec or a text system) by the next-item trainer's validation NDCG@10 (full
ranking), the LLM system and seed by its SFT
or DPO run's validation HR@1 (``manifest.json``), a residual system's partner and gate as its
run learned them, the fusion's lambda as the evaluation picked it on the validation split
(``evaluation_choices``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import duckdb
import numpy as np

from cprec_core.config import Profile
from cprec_core.evaluation.evaluate import FUSED, fuse, llm_systems
from cprec_core.layout import Layout
from cprec_core.prompts import Case
from cprec_core.recommend.retrieval import DomainItems, sequential_full_scores
from cprec_core.training.next_item import trained_next_item_models
from cprec_core.systems import system as registered


def manifest_version(path) -> str:
    """A short fingerprint of a model's manifest: it changes whenever the model is re-trained."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@dataclass(frozen=True)
class Retrieval:
    model: str  # a next-item system: sasrec, gru4rec or a text system
    valid_ndcg10: float
    version: str
    seed: int = 0

    def files(self, layout: Layout, slug: str):
        return layout.next_item_model(self.model, slug, self.seed)


@dataclass(frozen=True)
class Reranker:
    """The LLM system (and seed) that re-ranks, how its likelihoods are read, and the fusion
    with a classic model where the evaluation picked one."""

    system: str
    seed: int
    scoring: str  # sum, mean (the run's choice on its validation sample) or residual
    valid_hr1: float | None
    version: str
    fusion_lambda: float | None = None  # None: the LLM's scores alone
    fusion_partner: str | None = None  # the classic model fused with


def choose_retrieval(profile: Profile, slug: str) -> Retrieval:
    """The trained next-item model (system and seed) with the best validation NDCG@10; on
    ties the first in registry order (SASRec first) and the lower seed."""
    found = []
    for name, seed, files in trained_next_item_models(profile, slug):
        valid = json.loads(files.manifest.read_text())["valid"]["ndcg@10"]
        found.append(Retrieval(name, float(valid), manifest_version(files.manifest), seed))
    if not found:
        raise FileNotFoundError(f"no SASRec or GRU4Rec for {slug}: materialise sasrec[{slug}]")
    return max(found, key=lambda r: r.valid_ndcg10)  # max keeps the first on ties


def _validation(layout: Layout, system: str, slug: str, seed: int) -> tuple[str, float | None]:
    run = layout.sft_run(system, slug, seed)
    found = run.read_manifest().validation if run.manifest.is_file() else None
    if not found:
        return "mean", None
    return found["scoring"], float(found[f"hr@1 ({found['scoring']})"])


def choose_reranker(con: duckdb.DuckDBPyConnection, profile: Profile, slug: str,
                    domain: str) -> Reranker | None:
    """The trained residual run with the best validation HR@1 (its partner and gate
    learned in training: cprec_core.training.residual), else the fusion of the evaluation
    where it picked a lambda for this domain (its LLM system's best seed on validation),
    else the trained SFT or DPO run with the best validation HR@1; None when no LLM system
    is trained for the domain."""
    layout = profile.layout
    trained = [(name, seed) for name, seed in llm_systems(profile, slug, log=lambda _: None)
               if registered(name).kind in ("sft", "dpo")]
    if not trained:
        return None
    lambdas = dict(con.execute(
        "SELECT seed, value FROM evaluation_choices WHERE domain = ? AND system = ?"
        " AND choice = 'lambda'", [domain, FUSED]).fetchall()) if _has_table(
        con, "evaluation_choices") else {}
    partners = dict(con.execute(
        "SELECT seed, value FROM evaluation_choices WHERE domain = ? AND system = ?"
        " AND choice = 'classic'", [domain, FUSED]).fetchall()) if lambdas else {}
    fusion = profile.evaluation.fusion
    pool = ([(n, s) for n, s in trained if registered(n).residual]
            or [(n, s) for n, s in trained if n == fusion and s in lambdas] or trained)

    def ranked(run: tuple[str, int]) -> tuple[float, int]:
        hr1 = _validation(layout, run[0], slug, run[1])[1]
        return (-1.0 if hr1 is None else hr1, -run[1])  # the lower seed on ties

    name, seed = max(pool, key=ranked)
    scoring, hr1 = _validation(layout, name, slug, seed)
    run = layout.sft_run(name, slug, seed)
    version = manifest_version(run.manifest)
    if registered(name).residual:
        record = run.read_manifest().residual
        return Reranker(name, seed, scoring, hr1, version, float(record["gate"]),
                        record["partner"])
    fused = name == fusion and seed in lambdas
    return Reranker(name, seed, scoring, hr1, version, float(lambdas[seed]) if fused else None,
                    partners.get(seed) if fused else None)


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables"
                            " WHERE table_name = ?", [name]).fetchone()[0])


class LLMReranking:
    """Scores of retrieved candidates by the chosen reranker (and its fusion), loaded once."""

    def __init__(self, profile: Profile, slug: str, choice: Reranker, items: DomainItems):
        from cprec_core.evaluation.llm import LLMScorer

        self.profile, self.slug, self.choice, self.items = profile, slug, choice, items
        self.scorer = LLMScorer.load(profile, slug, choice.system, choice.seed)
        self.titles = dict(zip(items.ids.tolist(), items.titles))

    def llm_scores(self, users: list[int], histories: list[list[int]],
                   candidates: np.ndarray, progress=None) -> np.ndarray:
        """(users, N) likelihoods of each user's candidates (global ids), by the run's own
        reading (summed or per token)."""
        history = self.profile.sft.history
        cases = [Case(int(u), list(h)[-history:], [int(c) for c in cand], int(cand[0]))
                 for u, h, cand in zip(users, histories, candidates)]
        scored = self.scorer.evaluate(cases, self.titles, self.profile.evaluation.batch_size,
                                      generate=False, progress=progress)
        attr = "summed" if self.choice.scoring in ("sum", "residual") else "mean"
        return np.stack([getattr(r, attr) for r in scored]) if scored else np.zeros(
            candidates.shape)

    def scores(self, users: list[int], histories: list[list[int]], candidates: np.ndarray,
               retrieval_scores: np.ndarray, progress=None) -> np.ndarray:
        """The re-ranking scores: the LLM's, or z(classic partner) + lambda z(LLM).
        A candidate retrieval put at -inf (a history item, where a user has fewer unseen
        items than N) stays last."""
        llm = self.llm_scores(users, histories, candidates, progress)
        if self.choice.fusion_lambda is not None:
            partner = retrieval_scores
            if self.choice.fusion_partner:
                full = sequential_full_scores(
                    self.profile.layout.next_item_model(
                        self.choice.fusion_partner, self.slug,
                        getattr(self.profile, self.choice.fusion_partner).seeds[0]),
                    self.items, histories)
                partner = np.take_along_axis(
                    full, self.items.columns(candidates.ravel()).reshape(candidates.shape), 1)
            finite = np.where(np.isfinite(partner), partner, np.nan)
            floor = np.nan_to_num(np.nanmin(finite, axis=1, keepdims=True), nan=0.0)
            llm = fuse(np.where(np.isfinite(partner), partner, floor), llm,
                       self.choice.fusion_lambda)
        return np.where(np.isfinite(retrieval_scores), llm, -np.inf)


def model_runs(layout: Layout, slug: str, models: dict) -> dict[str, str | None]:
    """The MLflow runs (cprec_core.tracking) that trained the models a snapshot names
    (``describe``'s dict): ``reranker`` and ``retrieval``, None where one was not tracked."""
    runs: dict[str, str | None] = {}
    rerank, retrieval = models.get("rerank"), models.get("retrieval")
    if rerank:
        run = layout.sft_run(rerank["system"], slug, rerank["seed"])
        runs["reranker"] = run.read_manifest().mlflow_run_id if run.manifest.is_file() else None
    if retrieval:
        files = layout.next_item_model(retrieval["model"], slug, retrieval.get("seed", 0))
        if files.manifest.is_file():
            runs["retrieval"] = json.loads(files.manifest.read_text()).get("mlflow_run_id")
    return runs


def describe(retrieval: Retrieval, reranker: Reranker | None) -> dict:
    """The model versions a run of the pipeline used, for manifests and snapshots."""
    return {"retrieval": asdict(retrieval), "rerank": asdict(reranker) if reranker else None}
