"""What every ``python -m cprec_core.<tool>`` command shares: the profile arguments and, for
trainers, the process set-up (threads per process, quiet transformers, the reporter)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from cprec_core.config import Profile, load_config_file, load_profile
from cprec_core.progress import Reporter, open_reporter


def add_profile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--profile", default="demo", help="named profile (demo, study, full)")
    parser.add_argument("--config", help="YAML file of overrides (docs/CONFIG.md)")
    parser.add_argument("--data-dir", help="where databases and caches go (default: data)")
    return parser


def profile_from_args(args: argparse.Namespace) -> Profile:
    profile = load_config_file(args.config) if args.config else load_profile(args.profile)
    if args.data_dir:
        profile = dataclasses.replace(profile, data_dir=args.data_dir)
    return profile


def run_tool(work: Callable[[], object], database) -> int:
    """A ``python -m`` tool that reads the profile's database: a missing database, bad input
    (``ValueError``: a partition key, a config value, too little data), a table not built
    yet or a locked file end as one line and exit status 2, not a traceback."""
    import duckdb

    if not database.is_file():
        print(f"error: {database} does not exist: materialise the profile first",
              file=sys.stderr)
        return 2
    try:
        work()
    except (ValueError, duckdb.Error, TimeoutError) as exc:  # TimeoutError: DatabaseBusy
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_domain_run_arguments(parser: argparse.ArgumentParser, default_system: str,
                             systems: str, seeds: str) -> argparse.ArgumentParser:
    """What the per-domain trainers (SFT, DPO pairs, DPO) take: the domain's partition key,
    the system and the seeds (repeatable; ``seeds`` says the default)."""
    parser.add_argument("--domain", required=True, help="partition key, e.g. crime")
    parser.add_argument("--system", default=default_system, help=systems)
    parser.add_argument("--seed", type=int, action="append",
                        help=f"this seed only (repeatable); default: {seeds}")
    return parser


def add_reporter_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--reporter", help="module:function returning a reporter context"
                        " (default: stdout); the Dagster assets pass their Pipes reporter")
    return parser


def threads_per_process() -> int:
    """``CPREC_NUM_THREADS`` if set (a machine shared with other work: one thread per process
    avoids OpenMP stalls when a core is taken away), else the cores split between the
    processes of ``accelerate launch``."""
    if os.environ.get("CPREC_NUM_THREADS"):
        return max(1, int(os.environ["CPREC_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1)))


PARENT_PID = "CPREC_PARENT_PID"  # set by the Dagster launcher: the process of the run


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie not yet reaped counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def exit_with_parent(poll_s: float = 1.0) -> None:
    """A trainer a Dagster run started (``CPREC_PARENT_PID``) ends when that run's process
    does: a killed `make demo` must not leave its trainer writing checkpoints into the folder
    the next run resumes from. Exits as a kill would (status 137); the last checkpoint is
    complete, since checkpoints are written to a temporary folder and renamed."""
    pid = os.environ.get(PARENT_PID, "")
    if not pid.isdigit():
        return

    def watch() -> None:
        while not _gone(int(pid)):
            time.sleep(poll_s)
        print(f"the run's process {pid} is gone; stopping", file=sys.stderr, flush=True)
        os._exit(137)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_trainer(work: Callable[[Reporter], dict], errors: tuple[type[Exception], ...],
                reporter: str | None = None) -> int:
    """Threads split between the processes of ``accelerate launch``, progress through the
    reporter (Pipes under Dagster), known errors as one line and exit status 2; the trainer
    stops with the Dagster run that started it (``exit_with_parent``)."""
    import torch
    from transformers.utils import logging as transformers_logging

    exit_with_parent()

    torch.set_num_threads(threads_per_process())
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    with open_reporter(int(os.environ.get("RANK", "0")) == 0, reporter) as progress:
        try:
            result = work(progress)
        except errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if result.get("finished"):
            progress.done({k: v for k, v in result.items()
                           if isinstance(v, (int, float, str)) and v is not None})
    return 0
