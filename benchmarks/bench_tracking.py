"""Benchmark: what MLflow tracking adds to a training step, side by side with tracking off.

    python benchmarks/bench_tracking.py [--profile demo] [--model tiny-random] [--steps 20]

Three arms of the real CPT trainer (cprec_core.training.cpt.CPTTrainer through
``loop.run_steps``, the loop every LoRA trainer runs; its run folders in a temporary
directory, so nothing of the profile is touched), each set up once and then timed over the
same ``--steps`` steps of the plan after one untimed warm-up step:

- ``off``: tracking off (the null tracker);
- ``local``: the default store, SQLite under a temporary data folder;
- ``hung server``: a tracking URI whose server accepts connections and never answers
  (``timeout_s`` 1 s): the worst a team's server can do.

Per arm: the mean loop seconds per step (``run_steps``' own clock: the step, the train log
row, the tracker call); the steps' own seconds, the first five (while the tracker's thread
imports MLflow and opens the run beside them) and the median of the rest, against the mean
of the two ``off`` arms (the second measures the machine's drift); when the run existed;
and the time the run's end adds (``close``: the queue sent, the run ended; the artifacts
of a finished run are not part of this: ``--steps`` stops short of the plan's end). Then the per-call cost of
``RunTracker.log_step`` on a live local run, timed over 2,000 calls: the only thing the
training thread does for MLflow. A step on this CPU takes tens of milliseconds (tiny model)
to seconds (the demo's model), so the loop-level difference is within the step's own noise;
the per-call figure is the measurement.

The plan is one epoch over the whole corpus (``cpt.max_tokens`` 0), so that it has the
steps to time. Needs the profile's corpus and tokenizer (``make demo``, or its corpus stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from cprec_core import tracking
from cprec_core.config import TrackingConfig, load_profile
from cprec_core.layout import TrainedAdapter
from cprec_core.provenance import processor
from cprec_core.reporting import md_table
from cprec_core.training.cpt import CPTTrainer
from cprec_core.training.loop import one_step, run_steps


def hung_server() -> tuple[int, threading.Event]:
    """A port whose server accepts connections and never answers; set the event to stop."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()
        server.close()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1], stop


def arm(profile, label: str, folder: Path, steps: int) -> dict:
    """One arm: the trainer set up in ``folder``, a warm-up step, then ``steps`` steps
    through ``run_steps`` inside the arm's MLflow run."""
    trainer = CPTTrainer(profile, "wsa", run=TrainedAdapter(folder / label.replace(" ", "-")))
    trainer.run.path.mkdir(parents=True)
    trainer.setup(resume=False)
    if trainer.total_steps < steps + 1:
        raise SystemExit(f"the plan has {trainer.total_steps} steps, fewer than 1 + --steps")
    one_step(trainer, 0, trainer.cfg.grad_clip)  # warm-up: kernels, allocator
    trainer.start_step = 1
    opened, opened_at = time.perf_counter(), []
    with tracking.training_run(profile, name=f"bench {label}", params={"arm": label},
                               tags={"cprec.kind": "benchmark"}, log=print) as tracker:
        trainer.tracker = tracker
        if isinstance(tracker, tracking.RunTracker):
            threading.Thread(target=lambda: (tracker.wait_open(), opened_at.append(
                time.perf_counter() - opened)), daemon=True).start()
        result = run_steps(trainer, 10**9, trainer.cfg.grad_clip, stop_after=steps)
        closing = time.perf_counter()
    close_s = time.perf_counter() - closing
    rows = [json.loads(x)["seconds"] for x in trainer.run.train_log.read_text().splitlines()]
    return {"arm": label, "loop_s_per_step": result["seconds"] / steps,
            "first_s": statistics.mean(rows[:5]), "later_s": statistics.median(rows[5:]),
            "open_s": opened_at[0] if opened_at else None, "close_s": close_s,
            "run_id": getattr(tracker, "run_id", None),
            "failed": getattr(tracker, "failed", None)}


def per_call(profile, calls: int = 2000) -> float:
    """Microseconds per ``log_step`` on a live local run (the queue put)."""
    where = tracking.target(profile)
    tracker = tracking.RunTracker(where, name="bench log_step", params={}, tags={})
    tracker.wait_open()
    values = {"loss": 1.0, "lr": 1e-4, "tokens": 512.0, "seconds": 0.1,
              "tokens_per_second": 5120.0}
    started = time.perf_counter()
    for step in range(1, calls + 1):
        tracker.log_step(step, values)
    seconds = time.perf_counter() - started
    tracker.finished()
    tracker.close()
    return seconds / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--model", help="another base model (e.g. tiny-random: the shortest"
                                        " steps, where the overhead shows most)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir, "cpt": {"max_tokens": 0}}  # the whole corpus
    if args.model:
        overrides["model"] = {"name": args.model}
    base = load_profile(args.profile, overrides)
    if not base.layout.corpus_parquet.is_file():
        raise SystemExit(f"{base.layout.corpus_parquet}: no corpus; run `make demo` first")
    scratch = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    # the arms' profiles: the same data, their MLflow store in the scratch folder
    store = dataclasses.replace(base, tracking=TrackingConfig(
        uri=f"sqlite:///{scratch / 'mlflow.db'}"))
    port, stop = hung_server()
    hung = dataclasses.replace(base, tracking=TrackingConfig(
        uri=f"http://127.0.0.1:{port}", timeout_s=1.0))
    off = dataclasses.replace(base, tracking=TrackingConfig(enabled=False))
    print(f"chip: {processor()}; model {base.model.name}; {args.steps} timed steps per arm",
          flush=True)
    results = [arm(off, "off", scratch, args.steps), arm(store, "local", scratch, args.steps),
               arm(hung, "hung server", scratch, args.steps),
               arm(off, "off (again)", scratch, args.steps)]  # the machine's drift
    stop.set()
    micro = per_call(store)
    ref = statistics.mean([results[0]["later_s"], results[-1]["later_s"]])
    rows = [(r["arm"], f"{r['loop_s_per_step'] * 1000:.1f}", f"{r['first_s'] * 1000:.1f}",
             f"{r['later_s'] * 1000:.1f}", f"{(r['later_s'] - ref) * 1000:+.1f}",
             "" if r["open_s"] is None else f"{r['open_s']:.2f}", f"{r['close_s']:.2f}",
             r["failed"][:40] + "..." if r["failed"] else ("" if r["run_id"] else "off"))
            for r in results]
    print(md_table(["tracking", "loop ms/step", "steps 1-5 ms (mean)", "steps 6+ ms (median)",
                    "6+ vs off (ms)", "run opened after (s)", "end of run (s)", "tracker"],
                   rows))
    print(f"\nlog_step on a live local run: {micro:.1f} us per call (2,000 calls)")


if __name__ == "__main__":
    main()
