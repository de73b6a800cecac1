"""The recommendation snapshots the service answers from, held in memory and swapped without a
restart when the batch job publishes a new one.

The batch job writes each snapshot in full (two Parquet files named by its version), then
replaces ``current.json`` atomically (cprec_core.layout.RecommendationFiles). A request
therefore only has to notice that ``current.json`` changed: at most every ``refresh_s`` it
stats the file, and on a change one background thread loads the new snapshot and swaps it in
with a single reference assignment. Requests never wait for a load: until the swap they get
the old snapshot, and a request that already holds it keeps it to the end. A snapshot that
fails to load leaves the previous one serving; the error is logged and shown by ``/health``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from cprec_core.layout import NAME, RecommendationFiles

log = logging.getLogger(__name__)

RECOMMENDATION_COLUMNS = ["user_id", "user_idx", "rank", "item_id", "title", "score", "stage"]
ITEM_COLUMNS = ["item_idx", "item_id", "title"]


class SnapshotError(Exception):
    """A snapshot that cannot be served: a missing or unreadable file, a bad ``current.json``."""


@dataclass(frozen=True)
class Item:
    idx: int
    item_id: str
    title: str


@dataclass(frozen=True)
class Snapshot:
    """One domain's snapshot, ready to answer: per user the JSON of each recommended item
    (rank order), so a request is a dict lookup and a string join."""

    slug: str
    version: str
    info: dict[str, Any]  # current.json as published
    users: dict[str, tuple[str, ...]]  # user_id -> JSON objects of its items, rank order
    items: dict[str, Item]  # item_id -> item
    loaded_at: str

    @property
    def k(self) -> int:
        return int(self.info["k"])

    @property
    def data_version(self) -> str | None:
        return self.info.get("data_version")

    def response_body(self, user_id: str, k: int) -> bytes | None:
        """The ``/recommendations`` JSON of ``user_id``'s first ``k`` items; None for a user
        not in the snapshot."""
        items = self.users.get(user_id)
        if items is None:
            return None
        return (f'{{"domain":{json.dumps(self.slug)},"user_id":{json.dumps(user_id)},'
                f'"k":{k},"snapshot":{json.dumps(self.version)},'
                f'"data_version":{json.dumps(self.data_version)},'
                f'"items":[{",".join(items[:k])}]}}').encode()


def _item_json(rank: int, item_id: str, title: str, score: float, stage: str) -> str:
    return json.dumps({"rank": rank, "item_id": item_id, "title": title,
                       "score": score if math.isfinite(score) else None, "stage": stage},
                      ensure_ascii=False, separators=(",", ":"))


def _read(path: Path, columns: list[str]) -> dict[str, list]:
    try:
        table = pq.read_table(path, columns=columns)
    except FileNotFoundError as exc:
        raise SnapshotError(f"{path} is missing") from exc
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
        raise SnapshotError(f"{path} cannot be read: {exc}") from exc
    return table.to_pydict()


def read_current(files: RecommendationFiles) -> dict[str, Any]:
    """``current.json``: a mapping with at least ``version`` and ``k``."""
    try:
        info = json.loads(files.current.read_text())
    except FileNotFoundError as exc:
        raise SnapshotError(f"{files.current} does not exist: nothing published yet") from exc
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{files.current} cannot be read: {exc}") from exc
    if not isinstance(info, dict) or "version" not in info or "k" not in info:
        raise SnapshotError(f"{files.current}: expected an object with version and k")
    if not isinstance(info["k"], int) or info["k"] < 1:
        raise SnapshotError(f"{files.current}: k must be a positive integer, got {info['k']!r}")
    return info


def snapshot_paths(files: RecommendationFiles, info: dict[str, Any]) -> dict[str, Path]:
    """The Parquet files of the snapshot ``info`` (a ``current.json``) names. The paths come
    from the layout, never from the JSON, so a bad ``current.json`` cannot point outside the
    domain's folder; a version that is not a plain name, or file names that disagree with
    the layout, are an error."""
    version = str(info["version"])
    try:
        paths = {"recommendations": files.recommendations(version), "items": files.items(version)}
    except ValueError as exc:
        raise SnapshotError(f"{files.current}: {exc}") from exc
    for key, path in paths.items():
        if info.get(key, path.name) != path.name:
            raise SnapshotError(f"{files.current}: {key} is {str(info[key])[:200]!r},"
                                f" expected {path.name!r}")
    return paths


def load_snapshot(slug: str, files: RecommendationFiles, info: dict[str, Any]) -> Snapshot:
    """The snapshot ``info`` (a ``current.json``) names, read from its Parquet files
    (``snapshot_paths``)."""
    version = str(info["version"])
    paths = snapshot_paths(files, info)
    items_table = _read(paths["items"], ITEM_COLUMNS)
    items = {item_id: Item(int(idx), item_id, title) for idx, item_id, title
             in zip(items_table["item_idx"], items_table["item_id"], items_table["title"])}
    rows = _read(paths["recommendations"], RECOMMENDATION_COLUMNS)
    ranked: dict[str, list[tuple[int, str]]] = {}
    for user_id, rank, item_id, title, score, stage in zip(
            rows["user_id"], rows["rank"], rows["item_id"], rows["title"], rows["score"],
            rows["stage"]):
        ranked.setdefault(user_id, []).append(
            (rank, _item_json(rank, item_id, title, float(score), stage)))
    users = {user_id: tuple(text for _, text in sorted(entries))
             for user_id, entries in ranked.items()}
    return Snapshot(slug, version, info, users, items,
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when ``current.json`` is replaced (a new inode, time or size)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


@dataclass
class Domain:
    """One domain's serving state; ``snapshot`` is replaced whole, never changed in place."""

    slug: str
    files: RecommendationFiles
    snapshot: Snapshot | None = None
    error: str | None = None  # the last failed load, cleared by a successful one
    stamp: tuple[int, int, int] | None = None  # current.json as last read
    next_check: float = 0.0  # time.monotonic() of the next stat
    loading: threading.Lock = field(default_factory=threading.Lock)


class UnknownDomain(LookupError):
    pass


class SnapshotStore:
    """The current snapshot of each served domain. ``files_for(slug)`` says where a domain's
    snapshots are (``Layout.recommendation_files``). The first snapshots load in the
    constructor, so the service starts ready; a domain without one answers 503 until its
    first snapshot is published."""

    def __init__(self, files_for: Callable[[str], RecommendationFiles], slugs: list[str],
                 refresh_s: float = 1.0):
        self.refresh_s = refresh_s
        self.domains = {slug: Domain(slug, files_for(slug)) for slug in slugs}
        for domain in self.domains.values():
            with domain.loading:
                self._reload(domain, _stamp(domain.files.current))
            domain.next_check = time.monotonic() + refresh_s

    def domain(self, slug: str) -> Domain:
        """The domain, after starting a reload if ``current.json`` changed."""
        domain = self.domains.get(slug)
        if domain is None:
            raise UnknownDomain(slug)
        now = time.monotonic()
        if now >= domain.next_check:
            domain.next_check = now + self.refresh_s
            stamp = _stamp(domain.files.current)
            if stamp != domain.stamp and domain.loading.acquire(blocking=False):
                threading.Thread(target=self._reload_and_release, args=(domain, stamp),
                                 name=f"snapshot-{slug}", daemon=True).start()
        return domain

    def _reload_and_release(self, domain: Domain, stamp: tuple[int, int, int] | None) -> None:
        try:
            self._reload(domain, stamp)
        finally:
            domain.loading.release()

    def _reload(self, domain: Domain, stamp: tuple[int, int, int] | None) -> None:
        """Loads what ``current.json`` names when it is a new version. Called with
        ``domain.loading`` held. A failure is not retried until ``current.json`` changes."""
        domain.stamp = stamp
        try:
            info = read_current(domain.files)
            snapshot_paths(domain.files, info)  # checked even when the version is unchanged
            if domain.snapshot is not None and str(info["version"]) == domain.snapshot.version:
                domain.error = None
                return
            domain.snapshot = load_snapshot(domain.slug, domain.files, info)
            domain.error = None
            log.info("serving %s snapshot %s (%d users)", domain.slug, domain.snapshot.version,
                     len(domain.snapshot.users))
        except SnapshotError as exc:
            domain.error = str(exc)
            kept = domain.snapshot.version if domain.snapshot else "none"
            log.warning("%s: snapshot not loaded, still serving %s: %s", domain.slug, kept, exc)


def published_domains(root: Path) -> list[str]:
    """The domains under a profile's ``recommendations/`` folder that have a ``current.json``
    (folders whose name is not a partition key are not domains)."""
    return sorted(p.parent.name for p in root.glob("*/current.json")
                  if NAME.fullmatch(p.parent.name))
