"""Resources and the one place that reads the environment.

``CPREC_PROFILE`` (demo | full), ``CPREC_CONFIG`` (a YAML file of overrides, see
docs/CONFIG.md) and ``CPREC_DATA_DIR`` (default: ``data/`` in this repository) pick the
profile when the code location loads; the launchpad can override the same fields per run.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from cprec_core.config import Profile, load_config_file, load_profile

REPO_ROOT = Path(__file__).resolve().parent.parent


class CPRecConfig(dg.ConfigurableResource):
    """The profile a run uses, and its DuckDB database (one file per profile)."""

    profile: str = "demo"
    config_file: str = ""
    data_dir: str = ""
    num_processes: int = 1  # training processes per machine (accelerate launch)

    def load(self) -> Profile:
        profile = load_config_file(self.config_file) if self.config_file else load_profile(self.profile)
        data_dir = Path(self.data_dir or profile.data_dir)
        if not data_dir.is_absolute():
            data_dir = REPO_ROOT / data_dir
        profile = dataclasses.replace(profile, data_dir=str(data_dir.resolve()))
        profile.root.mkdir(parents=True, exist_ok=True)
        return profile

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the profile's database (dagster-duckdb retries on a held lock)."""
        with DuckDBResource(database=str(self.load().database)).get_connection() as con:
            yield con


def get_env() -> dict[str, str]:
    return {
        "profile": os.environ.get("CPREC_PROFILE", "demo"),
        "config_file": os.environ.get("CPREC_CONFIG", ""),
        "data_dir": os.environ.get("CPREC_DATA_DIR", ""),
    }


def build_resources(**env: str) -> dict:
    """The resource map for one environment (defaults: the process environment)."""
    return {"cprec": CPRecConfig(**(env or get_env())),
            "pipes_subprocess_client": dg.PipesSubprocessClient()}
