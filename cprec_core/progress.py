"""Where a training process reports to: stdout by default, or any reporter named on the
command line (``--reporter module:factory``). The Dagster assets name their Pipes reporter
(``cprec_assets.pipes_reporter:open_pipes_reporter``), so log lines and final metrics reach
Dagster while this package knows nothing about Dagster.

Long loops report through ``Throttled`` and ``Progress`` (below): a line at most every
``EVERY_S`` seconds, with the time left where it is knowable.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


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


# ---- time-throttled progress lines -----------------------------------------------------------
# Long loops (next-item training, candidate sets, scoring) report through a ``log`` callable
# (print, a Reporter's ``log``, Dagster's ``context.log.info``) at most every ``EVERY_S``
# seconds, plus the lines a loop forces (its first and last). Tests pass ``every_s=0`` to see
# every line.

EVERY_S = 30.0

Log = Callable[[str], None]


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def each(elapsed: float, done: int) -> str:
    """The mean time per unit: ``1.20 s``, ``35 ms``, ``0.8 ms``."""
    per = elapsed / max(done, 1)
    if per >= 1:
        return f"{per:.2f} s"
    ms = per * 1000
    return f"{ms:.0f} ms" if ms >= 9.95 else f"{ms:.1f} ms"


def time_left(done: int, total: int, elapsed: float) -> str:
    """``about 7 min 36 s left``: the units left at the mean time per unit so far; empty
    while nothing is done."""
    if done <= 0:
        return ""
    return f"about {duration((total - done) * elapsed / done)} left"


def counted(label: str, done: int, total: int, unit: str, elapsed: float, detail: str = "",
            left: str = "left") -> str:
    """``label: 40/500 cases<detail>, 1.20 s each, about 9 min 12 s left``; once done,
    ``label: 500/500 cases<detail> in 10 min 00 s, 1.20 s each``."""
    if done >= total:
        return (f"{label}: {done:,}/{total:,} {unit}{detail} in {duration(elapsed)},"
                f" {each(elapsed, done)} each")
    line = f"{label}: {done:,}/{total:,} {unit}{detail}, {each(elapsed, done)} each"
    if done > 0:
        line += ", " + time_left(done, total, elapsed).removesuffix("left") + left
    return line


class Throttled:
    """``log`` called at most every ``every_s`` seconds: ``throttled(message)`` logs only
    when the interval has passed since the last line; ``force=True`` logs anyway (a loop's
    first or last line). ``message`` may be a callable, built only when logged.
    ``clock`` is for tests."""

    def __init__(self, log: Log, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.every_s = EVERY_S if every_s is None else every_s
        self.clock = clock
        self.started = self.last = clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def due(self) -> bool:
        return self.clock() - self.last >= self.every_s

    def __call__(self, message: str | Callable[[], str], force: bool = False) -> bool:
        if not (force or self.due()):
            return False
        self.last = self.clock()
        self.log(message() if callable(message) else message)
        return True


class Progress:
    """A counted loop's progress: ``update(done)`` logs ``counted(...)`` through a
    ``Throttled`` (every ``every_s`` seconds), and always the last update
    (``done == total``); with ``first``, the first one too (its rate is the earliest
    estimate of a slow loop)."""

    def __init__(self, log: Log, label: str, total: int, unit: str = "cases",
                 every_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 first: bool = False):
        self.label, self.total, self.unit = label, total, unit
        self.throttled = Throttled(log, every_s, clock)
        self.first = first

    def update(self, done: int, detail: str = "") -> bool:
        force = self.first or done >= self.total
        self.first = False
        return self.throttled(lambda: counted(self.label, done, self.total, self.unit,
                                              self.throttled.elapsed, detail), force)
