"""Resources and the one place that reads the environment.

``CPREC_PROFILE`` (demo | study | full), ``CPREC_CONFIG`` (a YAML file of overrides, see
docs/CONFIG.md) and ``CPREC_DATA_DIR`` (default: ``data/`` in this repository) pick the
profile when the code location loads; ``CPREC_LANDING_DIR`` (default: ``<data dir>/landing``)
is the folder the landing sensor watches for new files (docs/OPERATIONS.md). The launchpad
can override the same fields per run, the ``launcher`` resource's (where the trainers
run: a child process by default, or a Kubernetes pod; cprec_assets.launcher,
docs/SCALING.md section 2) and the ``mlflow`` resource's (where runs are tracked;
cprec_assets.tracking, docs/OPERATIONS.md).
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from cprec_assets.launcher import REPO_ROOT, TrainingLauncher
from cprec_assets.tracking import MlflowTracking
from cprec_core.config import ConfigError, Profile, load_config_file, load_profile
from cprec_core.data.db import connect
from cprec_core.layout import LayoutError, check_folder


class ProfileResource(dg.ConfigurableResource):
    """The profile a run uses and its DuckDB database. The profile is read once when a run
    (or a step's process) sets the resource up; reading it creates nothing on disk."""

    profile_name: str = "demo"
    config_file: str = ""
    data_dir: str = ""
    num_processes: int = 1  # training processes per machine (accelerate launch)
    landing_dir: str = ""  # default: <data_dir>/landing
    settle_seconds: float = 60.0  # a landed file without a .done marker: unchanged this long

    _profile: Profile | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._profile = self._read()

    def _read(self) -> Profile:
        """The profile; every path the launchpad can set is checked here, where it enters
        (cprec_core.layout.check_folder: a ``ConfigError`` naming the field)."""
        profile = (load_config_file(_folder(self.config_file, "config_file")) if self.config_file
                   else load_profile(self.profile_name))
        data_dir = _folder(self.data_dir, "data_dir") if self.data_dir else Path(profile.data_dir)
        if not data_dir.is_absolute():
            data_dir = REPO_ROOT / data_dir
        return dataclasses.replace(profile, data_dir=str(data_dir.resolve()))

    @property
    def profile(self) -> Profile:
        """The run's profile (read now where the resource was not set up for a run)."""
        return self._profile if self._profile is not None else self._read()

    def landing_root(self) -> Path:
        """The landing folder (created if missing, so the sensor can watch it)."""
        if self.landing_dir:
            root = _folder(self.landing_dir, "landing_dir")
            root = root if root.is_absolute() else REPO_ROOT / root
        else:
            root = self.profile.layout.landing_dir
        root.mkdir(parents=True, exist_ok=True)
        return root

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the profile's database; waits while another process holds the
        file's lock (cprec_core.data.db), so concurrent steps queue instead of failing."""
        con = connect(self.profile.layout.database, read_only=read_only)
        try:
            yield con
        finally:
            con.close()


def _folder(value: str, field: str) -> Path:
    try:
        return check_folder(value, field)
    except LayoutError as exc:
        raise ConfigError(f"cprec resource: {exc}") from exc


def get_env() -> dict[str, str]:
    return {
        "profile_name": os.environ.get("CPREC_PROFILE", "demo"),
        "config_file": os.environ.get("CPREC_CONFIG", ""),
        "data_dir": os.environ.get("CPREC_DATA_DIR", ""),
        "landing_dir": os.environ.get("CPREC_LANDING_DIR", ""),
    }


def build_resources(**env: str) -> dict:
    """The resource map for one environment (defaults: the process environment); the
    trainers run as child processes unless the run config sets ``launcher``, and track to
    the profile's MLflow store unless it sets ``mlflow`` (cprec_assets.tracking)."""
    return {"cprec": ProfileResource(**(env or get_env())), "launcher": TrainingLauncher(),
            "mlflow": MlflowTracking()}
