"""Classic scorers on the fixed candidate sets: popularity, item-kNN (in-domain and across
all domains) and SASRec. They are strong on small genre domains (method.md section 3), so
every table carries them.

The cases and their histories: cprec_core.data.cases. Co-occurrence and popularity come
from train interactions only.
"""

from __future__ import annotations

import duckdb
import numpy as np
import scipy.sparse as sp
import torch

from cprec_core.data.cases import Cases


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
    return next_item_scores(model, index, cases.histories, cases.candidates, max_len)


def next_item_scores(model, index: list[int], histories, candidates, max_len: int) -> np.ndarray:
    """(cases, candidates) logits of a next-item model: each history (global ids, oldest
    first, its last ``max_len`` read) re-indexed to the model's items. The evaluation and
    the residual ranker's training windows (cprec_core.training.residual) both score here."""
    from cprec_core.models.sasrec import left_pad

    local = {item: j + 1 for j, item in enumerate(index)}
    seqs = left_pad([[local[i] for i in h] for h in histories], max_len)
    cands = torch.as_tensor(np.vectorize(local.get)(np.asarray(candidates)), dtype=torch.long)
    with torch.no_grad():
        return model.scores(seqs, cands).numpy()
