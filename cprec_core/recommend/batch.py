"""Recommendations for every user of a target domain: the top k unseen items of the
two-stage pipeline (cprec_core.recommend.pipeline), stored in DuckDB (``recommendations``)
and exported as an immutable Parquet snapshot for the HTTP service (cprec_core.serving).

    python -m cprec_core.recommend.batch --profile demo --domain crime

A user's history here is everything the domain knows of them (train, validation and test
items): shipping uses all the data, the evaluation holds the last items out. Users are
re-ranked most recently active first, so with ``recommend.rerank_users`` the LLM's budget
goes to the users most likely to come back; the others keep the retrieval's order and
their rows say so (``stage``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, ContextManager

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cprec_core.config import Profile
from cprec_core.data.db import atomic
from cprec_core.data.domain_users import domain_data_version, domain_for_slug
from cprec_core.layout import RecommendationFiles
from cprec_core.progress import Progress, duration
from cprec_core.recommend.pipeline import (LLMReranking, choose_reranker, choose_retrieval,
                                           describe)
from cprec_core.recommend.retrieval import (DomainItems, domain_items, exclude_history,
                                            sequential_full_scores, top_n)

SCHEMA = """
CREATE TABLE IF NOT EXISTS recommendations (
    domain VARCHAR NOT NULL, user_id VARCHAR NOT NULL, user_idx INTEGER NOT NULL,
    rank INTEGER NOT NULL, item_id VARCHAR NOT NULL, item_idx INTEGER NOT NULL,
    title VARCHAR NOT NULL, score DOUBLE NOT NULL, stage VARCHAR NOT NULL,
    retrieval_model VARCHAR NOT NULL, rerank_system VARCHAR, data_version VARCHAR NOT NULL,
    snapshot VARCHAR NOT NULL)
"""
COLUMNS = ("domain", "user_id", "user_idx", "rank", "item_id", "item_idx", "title", "score",
           "stage", "retrieval_model", "rerank_system", "data_version", "snapshot")
ARROW_SCHEMA = pa.schema([("domain", pa.string()), ("user_id", pa.string()),
                          ("user_idx", pa.int32()), ("rank", pa.int32()),
                          ("item_id", pa.string()), ("item_idx", pa.int32()),
                          ("title", pa.string()), ("score", pa.float64()),
                          ("stage", pa.string()), ("retrieval_model", pa.string()),
                          ("rerank_system", pa.string()), ("data_version", pa.string()),
                          ("snapshot", pa.string())])


@dataclass
class DomainUsers:
    """Every user of a domain, most recently active first, with their whole history."""

    users: list[int]
    user_ids: list[str]
    histories: list[list[int]]  # oldest first: train, validation, test items


def domain_users_by_recency(con: duckdb.DuckDBPyConnection, domain: str) -> DomainUsers:
    rows = con.execute(
        """SELECT d.user_idx, u.user_id,
                  list_concat(d.history, list_filter([d.valid_item, d.test_item],
                                                     lambda x: x IS NOT NULL)),
                  (SELECT max(ts) FROM interactions i
                   WHERE i.domain = d.domain AND i.user_idx = d.user_idx) AS last_seen
           FROM domain_users d JOIN users u USING (user_idx)
           WHERE d.domain = ? ORDER BY last_seen DESC NULLS LAST, d.user_idx""",
        [domain]).fetchall()
    return DomainUsers([r[0] for r in rows], [r[1] for r in rows], [list(r[2]) for r in rows])


def snapshot_version(rows_digest: str) -> str:
    """``YYYYmmdd-HHMMSS-<microseconds>-<8 hex>``: sorts by the time it was made."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S-%f}-{rows_digest[:8]}"


def _write_atomically(path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)


def export_snapshot(files: RecommendationFiles, table: pa.Table, items: DomainItems,
                    info: dict, keep: int) -> str:
    """Write the snapshot's two Parquet files, then point ``current.json`` at them (atomic
    renames, in that order), then delete all but the ``keep`` newest snapshots."""
    version = info["version"]
    files.path.mkdir(parents=True, exist_ok=True)
    item_table = pa.table({"item_idx": pa.array(items.ids, pa.int32()),
                           "item_id": pa.array(items.source_ids, pa.string()),
                           "title": pa.array(items.titles, pa.string())})
    _write_atomically(files.recommendations(version), lambda p: pq.write_table(table, p))
    _write_atomically(files.items(version), lambda p: pq.write_table(item_table, p))
    current = {**info, "recommendations": files.recommendations(version).name,
               "items": files.items(version).name}
    _write_atomically(files.current, lambda p: open(p, "w").write(json.dumps(current, indent=1)))
    versions = sorted(p.name.removeprefix("recommendations-").removesuffix(".parquet")
                      for p in files.path.glob("recommendations-*.parquet"))
    for old in versions[:-keep]:
        if old != version:
            files.recommendations(old).unlink(missing_ok=True)
            files.items(old).unlink(missing_ok=True)
    return version


def recommend_domain(connect: Callable[[], ContextManager[duckdb.DuckDBPyConnection]],
                     profile: Profile, slug: str, log=print,
                     every_s: float | None = None) -> dict:
    """Top-k recommendations for every user of ``slug``: stored (the domain's rows
    replaced) and exported. Returns the snapshot's ``current.json`` content plus counts."""
    cfg, layout = profile.recommend, profile.layout
    started = time.perf_counter()
    with connect() as con:
        domain, _ = domain_for_slug(con, slug)
        items = domain_items(con, domain)
        people = domain_users_by_recency(con, domain)
        data_version = domain_data_version(con, domain)
        retrieval = choose_retrieval(profile, slug)
        reranker = choose_reranker(con, profile, slug, domain)
    if not people.users:
        raise ValueError(f"no users in {domain!r}: materialise domain_users[{slug}]")
    scores = exclude_history(sequential_full_scores(
        retrieval.files(layout, slug), items, people.histories),
        items, people.histories)
    retrieved, retrieval_scores = top_n(scores, cfg.retrieve)
    retrieval_seconds = time.perf_counter() - started
    log(f"{slug} recommendations: {len(people.users):,} users, top {cfg.retrieve} of"
        f" {len(items.ids):,} items by {retrieval.model} in {duration(retrieval_seconds)}")
    final, final_scores = retrieved.copy(), retrieval_scores.copy()
    reranked = 0
    if reranker is not None:
        reranked = len(people.users) if cfg.rerank_users == 0 else min(cfg.rerank_users,
                                                                         len(people.users))
        reranking = LLMReranking(profile, slug, reranker, items)
        progress = Progress(log, f"{slug} recommendations: re-ranking by {reranker.system}"
                                 f" seed {reranker.seed}", reranked, "users", every_s,
                            first=True)
        part = slice(0, reranked)
        llm = reranking.scores(people.users[part], people.histories[part],
                               items.ids[retrieved[part]], retrieval_scores[part],
                               lambda done, _: progress.update(done))
        order = np.argsort(-llm, axis=1, kind="stable")
        final[part] = np.take_along_axis(retrieved[part], order, 1)
        final_scores[part] = np.take_along_axis(llm, order, 1)
    rerank_seconds = time.perf_counter() - started - retrieval_seconds
    k = min(cfg.k, final.shape[1])
    rows = []
    for i, (user, user_id) in enumerate(zip(people.users, people.user_ids)):
        stage = "rerank" if i < reranked else "retrieval"
        for rank in range(k):
            if not np.isfinite(final_scores[i, rank]):
                break  # the user has seen nearly every item: fewer than k to recommend
            col = int(final[i, rank])
            rows.append((domain, str(user_id), int(user), rank + 1, items.source_ids[col],
                         int(items.ids[col]), items.titles[col], float(final_scores[i, rank]),
                         stage, retrieval.model, reranker.system if stage == "rerank" else None,
                         data_version))
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()
    version = snapshot_version(digest)
    rows = [(*r, version) for r in rows]
    rows.sort(key=lambda r: (r[2], r[3]))
    table = pa.Table.from_pylist([dict(zip(COLUMNS, r)) for r in rows], schema=ARROW_SCHEMA)
    with connect() as con:
        con.execute(SCHEMA)
        with atomic(con):
            con.execute("DELETE FROM recommendations WHERE domain = ?", [domain])
            con.register("snapshot_rows", table)
            con.execute("INSERT INTO recommendations SELECT * FROM snapshot_rows")
            con.unregister("snapshot_rows")
    info = {"version": version, "domain": domain, "slug": slug, "k": k,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data_version": data_version,
            "models": {**describe(retrieval, reranker), "retrieve": cfg.retrieve},
            "users": len(people.users), "reranked_users": reranked}
    export_snapshot(layout.recommendation_files(slug), table, items, info, cfg.keep_snapshots)
    log(f"{slug} recommendations: {len(rows):,} rows, snapshot {version}; retrieval"
        f" {len(people.users) / max(retrieval_seconds, 1e-9):,.0f} users/s, re-ranking"
        + (f" {reranked / max(rerank_seconds, 1e-9):.2f} users/s" if reranked else " none"))
    return {**info, "rows": len(rows), "retrieval_seconds": round(retrieval_seconds, 2),
            "rerank_seconds": round(rerank_seconds, 2)}


def recommendation_sample(con: duckdb.DuckDBPyConnection, domain: str, users: int = 5,
                          history: int = 5) -> list[tuple[str, str, str]]:
    """(user, their last ``history`` titles, their recommended titles) for the users with
    the most recent activity: what a person reads to judge the recommendations by eye."""
    picked = con.execute(
        """SELECT r.user_idx, any_value(r.user_id) FROM recommendations r
           JOIN interactions i ON i.user_idx = r.user_idx AND i.domain = r.domain
           WHERE r.domain = ? GROUP BY r.user_idx ORDER BY max(i.ts) DESC, r.user_idx
           LIMIT ?""", [domain, users]).fetchall()
    out = []
    for user_idx, user_id in picked:
        seen = [t for (t,) in con.execute(
            """SELECT it.title FROM interactions i JOIN items it USING (item_idx)
               WHERE i.domain = ? AND i.user_idx = ? ORDER BY i.ts DESC LIMIT ?""",
            [domain, user_idx, history]).fetchall()]
        recommended = [t for (t,) in con.execute(
            "SELECT title FROM recommendations WHERE domain = ? AND user_idx = ? ORDER BY rank",
            [domain, user_idx]).fetchall()]
        out.append((str(user_id), "; ".join(reversed(seen)), "; ".join(recommended)))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    from cprec_core.cli import add_profile_arguments, profile_from_args, run_tool
    from cprec_core.data.db import connect

    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--domain", required=True, help="partition key, e.g. crime")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)

    def work() -> None:
        report = recommend_domain(lambda: connect(profile.layout.database), profile,
                                  args.domain)
        print(json.dumps(report, indent=1))

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    raise SystemExit(main())
