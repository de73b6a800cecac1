"""On-the-fly re-ranking for the HTTP service's ``POST /rerank``: the LLM system that
produced a domain's served recommendations (named in its snapshot's ``current.json``)
scores a caller's candidates after a caller's history."""

from __future__ import annotations

import json
import threading
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from cprec_core.config import Profile
from cprec_core.recommend.pipeline import LLMReranking, Reranker
from cprec_core.recommend.retrieval import (DomainItems, exclude_history,
                                            sequential_full_scores)

RerankFn = Callable[[str, list[int], list[int]], list[float]]


def snapshot_items(profile: Profile, slug: str) -> tuple[dict, DomainItems]:
    """(current.json, the snapshot's items) of a domain's served snapshot."""
    files = profile.layout.recommendation_files(slug)
    info = json.loads(files.current.read_text())
    table = pq.read_table(files.path / info["items"]).to_pydict()
    return info, DomainItems(info["domain"], np.asarray(table["item_idx"], dtype=np.int64),
                             table["item_id"], table["title"])


class SnapshotReranker:
    """One domain's re-ranker, loaded on first use (an LLM load takes seconds)."""

    def __init__(self, profile: Profile, slug: str):
        self.profile, self.slug = profile, slug
        info, self.items = snapshot_items(profile, slug)
        self.version, models = info["version"], info["models"]
        if models.get("rerank") is None:
            raise LookupError(f"{slug}: the served snapshot was not re-ranked by an LLM")
        self.retrieval_model = models["retrieval"]["model"]
        self.retrieval_seed = models["retrieval"].get("seed", 0)
        self.reranking = LLMReranking(profile, slug, Reranker(**models["rerank"]), self.items)

    def __call__(self, history: list[int], candidates: list[int]) -> list[float]:
        cand = np.asarray([candidates], dtype=np.int64)
        full = exclude_history(sequential_full_scores(
            self.profile.layout.next_item_model(self.retrieval_model, self.slug,
                                                self.retrieval_seed), self.items,
            [history]), self.items, [history])
        retrieval = np.take_along_axis(full, self.items.columns(cand.ravel())[None], 1)
        # a candidate the caller already has is still scored: the caller asked for it
        retrieval = np.where(np.isfinite(retrieval), retrieval, np.nanmin(
            np.where(np.isfinite(full), full, np.nan)))
        scores = self.reranking.scores([0], [history], cand, retrieval)
        return [float(x) for x in scores[0]]


def load_reranker(profile: Profile) -> RerankFn:
    """``rerank(slug, history, candidates) -> scores`` (global item ids, higher is better)
    by the model of the domain's served snapshot, loaded on the first request and again
    when a new snapshot names another version; one re-ranking at a time."""
    loaded: dict[str, SnapshotReranker] = {}
    lock = threading.Lock()

    def rerank(slug: str, history: list[int], candidates: list[int]) -> list[float]:
        with lock:
            current = json.loads(profile.layout.recommendation_files(slug).current.read_text())
            if slug not in loaded or loaded[slug].version != current["version"]:
                loaded.pop(slug, None)  # the old model is freed before the new one loads
                loaded[slug] = SnapshotReranker(profile, slug)
            return loaded[slug](history, candidates)

    return rerank
