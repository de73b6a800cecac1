"""The trainers' reporter when Dagster launches them: log lines and the final metrics go back
through Dagster Pipes (``dagster-pipes``, the small dependency-free protocol package for
external processes). Named on the trainer's command line by ``accelerate_command``:
``--reporter cprec_assets.pipes_reporter:open_pipes_reporter``. Importing this module does
not import the Dagster framework, so the child process stays light."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from dagster_pipes import open_dagster_pipes

from cprec_core.progress import Reporter


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
def open_pipes_reporter() -> Iterator[Reporter]:
    with open_dagster_pipes() as pipes:
        yield PipesReporter(pipes)
