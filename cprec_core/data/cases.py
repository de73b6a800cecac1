"""The stored candidate sets as cases: what the evaluation scores and what SFT selects on.

A case's history: the user's train items in the domain (plus the validation item for test
cases, which precedes the test item), and every domain's train items for item-kNN. Each case
carries its user's activity tercile and its target's popularity group (``popularity_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from cprec_core.prompts import Case


@dataclass(frozen=True)
class Cases:
    domain: str
    split: str
    users: np.ndarray
    targets: np.ndarray
    candidates: np.ndarray  # (n, 20) global item ids
    activity: list[str]
    popularity: list[str]  # the target's train-popularity group: head, torso or tail
    histories: list[list[int]]  # in-domain, time order
    all_histories: list[list[int]]  # every domain

    @property
    def target_col(self) -> np.ndarray:
        return np.argmax(self.candidates == self.targets[:, None], axis=1)

    def prompt_cases(self, history: int) -> list[Case]:
        """The cases as prompts read them: the last ``history`` items of each history."""
        return [Case(int(u), h[-history:], [int(c) for c in cand], int(t), list(h))
                for u, h, cand, t in zip(self.users, self.histories, self.candidates,
                                         self.targets)]


POPULARITY_GROUPS = ("head", "torso", "tail")


def popularity_groups(con: duckdb.DuckDBPyConnection, domain: str) -> dict[int, str]:
    """Each item of ``domain`` in its train-popularity tercile: the domain's items ordered by
    train interactions (most first, ties by id), the first third ``head``, the next
    ``torso``, the rest ``tail`` (items never bought in train among them). Where text should
    help most is the tail: few interactions to learn an ID embedding from."""
    items = [r[0] for r in con.execute(
        """SELECT it.item_idx FROM items it LEFT JOIN interactions i
           ON i.item_idx = it.item_idx AND i.split = 'train'
           WHERE it.domain = ? GROUP BY it.item_idx
           ORDER BY count(i.item_idx) DESC, it.item_idx""", [domain]).fetchall()]
    n = len(items)
    return {item: POPULARITY_GROUPS[min(2, 3 * rank // max(n, 1))]
            for rank, item in enumerate(items)}


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
    groups = popularity_groups(con, domain)
    return Cases(domain, split, np.asarray(users), np.asarray([r[1] for r in rows]),
                 np.asarray([r[2] for r in rows]), [r[3] for r in rows],
                 [groups.get(int(r[1]), "tail") for r in rows], histories,
                 [others.get(u, []) + h for u, h in zip(users, histories)])
