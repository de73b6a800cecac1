"""Where a training process reports to: stdout, or Dagster Pipes when Dagster launched it.

The trainers run as plain ``python -m cprec_core.<tool>`` commands. When the environment
carries a Pipes context (the ``cpt_adapter`` asset starts the command through
``PipesSubprocessClient``), log lines and the final metrics are sent back to Dagster with
the ``dagster-pipes`` protocol package, a small dependency-free library meant for exactly
such external processes; the Dagster framework itself is never imported here.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class Reporter:
    """Prints to stdout (rank 0 only)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def done(self, metadata: dict[str, Any]) -> None:
        if self.enabled:
            print(json.dumps({"result": metadata}), flush=True)


class PipesReporter(Reporter):
    def __init__(self, pipes):
        super().__init__(True)
        self.pipes = pipes

    def log(self, message: str) -> None:
        print(message, flush=True)
        self.pipes.log.info(message)

    def done(self, metadata: dict[str, Any]) -> None:
        super().done(metadata)
        self.pipes.report_asset_materialization(metadata=metadata)


@contextmanager
def open_reporter(is_main_process: bool = True) -> Iterator[Reporter]:
    if is_main_process and os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            yield PipesReporter(pipes)
    else:
        yield Reporter(is_main_process)
        sys.stdout.flush()
