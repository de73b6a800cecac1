"""Where a training process reports to: stdout by default, or any reporter named on the
command line (``--reporter module:factory``). The Dagster assets name their Pipes reporter
(``cprec_assets.pipes_reporter:open_pipes_reporter``), so log lines and final metrics reach
Dagster while this package knows nothing about Dagster.
"""

from __future__ import annotations

import importlib
import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class Reporter:
    """Prints to stdout (rank 0 only). Other reporters subclass it."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def done(self, metadata: dict[str, Any]) -> None:
        if self.enabled:
            print(json.dumps({"result": metadata}), flush=True)


def load_factory(spec: str):
    """``"package.module:function"`` -> the function (a context manager yielding a Reporter)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--reporter {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)


@contextmanager
def open_reporter(is_main_process: bool = True, factory: str | None = None) -> Iterator[Reporter]:
    if is_main_process and factory:
        with load_factory(factory)() as reporter:
            yield reporter
    else:
        yield Reporter(is_main_process)
        sys.stdout.flush()
