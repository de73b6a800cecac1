"""Scores over a domain's whole item set: the first stage of the two-stage pipeline and the
classic rows of the full-ranking evaluation (the SASRec and HSTU papers' protocol).

Every scorer returns a (users, items) matrix whose column j is ``DomainItems.ids[j]``;
the items a user already has are set to -inf by ``exclude_history``, so they are never
recommended nor counted as ranking above the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import scipy.sparse as sp
import torch

from cprec_core.layout import NextItemFiles
from cprec_core.models.sasrec import left_pad
from cprec_core.training.next_item import load_next_item_model



@dataclass(frozen=True)
class DomainItems:
    """A domain's items in one fixed order: global ids, source ids and titles."""

    domain: str
    ids: np.ndarray  # global item_idx, ascending
    source_ids: list[str]
    titles: list[str]

    def columns(self, items) -> np.ndarray:
        """The column of each global id in ``items`` (every one must be the domain's)."""
        cols = np.searchsorted(self.ids, np.asarray(items, dtype=np.int64))
        if len(cols) and (cols.max() >= len(self.ids) or (self.ids[cols] != items).any()):
            raise ValueError(f"items outside {self.domain!r} among {list(items)[:10]}")
        return cols


def domain_items(con: duckdb.DuckDBPyConnection, domain: str) -> DomainItems:
    rows = con.execute("SELECT item_idx, item_id, title FROM items WHERE domain = ?"
                       " ORDER BY item_idx", [domain]).fetchall()
    if not rows:
        raise ValueError(f"no items for domain {domain!r}")
    return DomainItems(domain, np.asarray([r[0] for r in rows], dtype=np.int64),
                       [r[1] for r in rows], [r[2] for r in rows])


def exclude_history(scores: np.ndarray, items: DomainItems,
                    histories: list[list[int]]) -> np.ndarray:
    """``scores`` with every history item of each row at -inf (in place, returned)."""
    for row, history in enumerate(histories):
        if history:
            scores[row, items.columns(sorted(set(history)))] = -np.inf
    return scores


def popularity_scores(con: duckdb.DuckDBPyConnection, items: DomainItems,
                      n_users: int) -> np.ndarray:
    """Train interactions per item, the same for every user."""
    counts = dict(con.execute(
        "SELECT item_idx, count(*) FROM interactions WHERE domain = ? AND split = 'train'"
        " GROUP BY item_idx", [items.domain]).fetchall())
    row = np.asarray([counts.get(int(i), 0) for i in items.ids], dtype=np.float64)
    return np.repeat(row[None], n_users, axis=0)


def item_knn_scores(con: duckdb.DuckDBPyConnection, items: DomainItems,
                    histories: list[list[int]]) -> np.ndarray:
    """score(c) = sum over history items h of cosine(h, c), on the domain's train user-item
    matrix (as the 20-candidate item-kNN, cprec_core.evaluation.baselines)."""
    pairs = np.asarray(con.execute(
        "SELECT user_idx, item_idx FROM interactions WHERE split = 'train' AND domain = ?",
        [items.domain]).fetchall(), dtype=np.int64).reshape(-1, 2)
    users = np.unique(pairs[:, 0], return_inverse=True)[1]
    x = sp.csr_matrix((np.ones(len(pairs)), (users, items.columns(pairs[:, 1]))),
                      shape=(int(users.max(initial=-1)) + 1, len(items.ids)))
    x.data[:] = 1.0
    norm = np.sqrt(np.asarray(x.sum(0)).ravel())
    norm[norm == 0] = 1.0
    co = (x.T @ x).tocsr()
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = (items.columns(np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]))
            if len(rows) else np.zeros(0, dtype=np.int64))
    h = sp.csr_matrix((1.0 / norm[cols], (rows, cols)), shape=(len(histories), len(items.ids)))
    return np.asarray((h @ co).todense()) / norm[None]


def sequential_full_scores(files: NextItemFiles, items: DomainItems,
                           histories: list[list[int]], batch_size: int = 512) -> np.ndarray:
    """SASRec's or GRU4Rec's logits of every domain item after each history; an item the
    model never saw scores -inf."""
    model, index = load_next_item_model(files)
    model.eval()
    local = {item: j + 1 for j, item in enumerate(index)}
    known = np.asarray([i in local for i in items.ids])
    model_cols = np.asarray([local.get(int(i), 1) - 1 for i in items.ids])
    out = np.full((len(histories), len(items.ids)), -np.inf)
    with torch.no_grad():
        for start in range(0, len(histories), batch_size):
            part = histories[start:start + batch_size]
            seqs = left_pad([[local[i] for i in h if i in local] for h in part],
                            model.shape.max_len)
            logits = model.scores(seqs).double().numpy()
            out[start:start + len(part), known] = logits[:, model_cols[known]]
    return out


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, scores) of each row's ``n`` best, best first, ties by column; -inf columns
    (history) come last, so they appear only where a row has fewer than ``n`` others."""
    cols = np.argsort(-scores, axis=1, kind="stable")[:, :min(n, scores.shape[1])]
    return cols, np.take_along_axis(scores, cols, 1)
