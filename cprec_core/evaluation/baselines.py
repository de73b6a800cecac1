"""Classic scorers on the fixed candidate sets: popularity, item-kNN (in-domain and across
all domains) and SASRec. They are strong on small genre domains (method.md section 3), so
every table carries them.

History of a case: the user's train items (plus the validation item for test cases, which
precedes the test item). Co-occurrence and popularity come from train interactions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import scipy.sparse as sp
import torch


@dataclass(frozen=True)
class Cases:
    domain: str
    split: str
    users: np.ndarray
    targets: np.ndarray
    candidates: np.ndarray  # (n, 20) global item ids
    activity: list[str]
    histories: list[list[int]]  # in-domain, time order
    all_histories: list[list[int]]  # every domain

    @property
    def target_col(self) -> np.ndarray:
        return np.argmax(self.candidates == self.targets[:, None], axis=1)


def load_cases(con: duckdb.DuckDBPyConnection, domain: str, split: str, max_cases: int = 0,
               seed: int = 0) -> Cases:
    """The domain's cases of ``split``; with ``max_cases``, the same seeded sample for every
    system."""
    rows = con.execute(
        """SELECT c.user_idx, c.target, c.candidates, c.activity, u.history, u.valid_item
           FROM candidate_sets c JOIN domain_users u USING (domain, user_idx)
           WHERE c.domain = ? AND c.split = ? ORDER BY c.user_idx""", [domain, split]).fetchall()
    if not rows:
        raise ValueError(f"no {split} candidate sets for {domain!r}: materialise candidate_sets")
    if max_cases and len(rows) > max_cases:
        pick = np.random.default_rng(seed).choice(len(rows), max_cases, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    users = [r[0] for r in rows]
    others = dict(con.execute(
        """SELECT user_idx, list(item_idx ORDER BY ts) FROM interactions
           WHERE split = 'train' AND domain != ? AND user_idx IN (SELECT unnest(?))
           GROUP BY user_idx""", [domain, users]).fetchall())
    histories = [list(r[4]) + ([r[5]] if split == "test" and r[5] is not None else []) for r in rows]
    return Cases(domain, split, np.asarray(users), np.asarray([r[1] for r in rows]),
                 np.asarray([r[2] for r in rows]), [r[3] for r in rows], histories,
                 [others.get(u, []) + h for u, h in zip(users, histories)])


def popularity(con: duckdb.DuckDBPyConnection, cases: Cases) -> np.ndarray:
    counts = dict(con.execute(
        "SELECT item_idx, count(*) FROM interactions WHERE domain = ? AND split = 'train'"
        " GROUP BY item_idx", [cases.domain]).fetchall())
    return np.vectorize(lambda i: counts.get(int(i), 0), otypes=[float])(cases.candidates)


def item_knn(con: duckdb.DuckDBPyConnection, cases: Cases, all_domains: bool) -> np.ndarray:
    """score(c) = sum over history items h of cosine(h, c) on the user-item train matrix."""
    where = "" if all_domains else "AND domain = ?"
    params = [] if all_domains else [cases.domain]
    pairs = np.asarray(con.execute(
        f"SELECT user_idx, item_idx FROM interactions WHERE split = 'train' {where}", params
    ).fetchall(), dtype=np.int64).reshape(-1, 2)
    n_users = int(max(pairs[:, 0].max(initial=0), cases.users.max()) + 1)
    n_items = int(max(pairs[:, 1].max(initial=0), cases.candidates.max(),
                      max((max(h) for h in cases.all_histories if h), default=0)) + 1)
    x = sp.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_users, n_items))
    x.data[:] = 1.0  # duplicates (none after cleaning) would count once
    norm = np.sqrt(np.asarray(x.sum(0)).ravel())
    norm[norm == 0] = 1.0
    co = (x.T @ x).tocsr()  # item x item co-occurrence
    histories = cases.all_histories if all_domains else cases.histories
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(rows) else []
    h = sp.csr_matrix((1.0 / norm[cols], (rows, cols)), shape=(len(histories), n_items))
    totals = (h @ co).tocsr()
    scores = np.asarray(totals[np.arange(len(histories))[:, None], cases.candidates].todense())
    return scores / norm[cases.candidates]


def sequential_scores(model, index: list[int], cases: Cases, max_len: int) -> np.ndarray:
    """SASRec's or GRU4Rec's logits (the same interface) for each case's candidates, from
    its history re-indexed to the model's item ids (``index``)."""
    from cprec_core.models.sasrec import left_pad

    local = {item: j + 1 for j, item in enumerate(index)}
    seqs = left_pad([[local[i] for i in h] for h in cases.histories], max_len)
    cands = torch.as_tensor(np.vectorize(local.get)(cases.candidates), dtype=torch.long)
    with torch.no_grad():
        return model.scores(seqs, cands).numpy()
