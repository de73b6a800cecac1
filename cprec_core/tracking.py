"""Experiment tracking in MLflow: one run per training (CPT, SFT, DPO, the next-item models),
per evaluation of a domain and per leaderboard or results table, so runs can be compared
side by side in the MLflow UI (``make mlflow``) and adapters found in its model registry.

The profile's ``tracking`` section says where runs go (cprec_core.config.TrackingConfig): by
default a SQLite store under the profile's data folder, so a fresh clone tracks offline.

Training never waits on the tracking server. A ``RunTracker`` hands every call to one
background thread through a bounded queue: a step costs a queue put. Calls to the server
time out after ``tracking.timeout_s`` without retries; the first failure is reported once
and the run's remaining calls are dropped, the run folder's own files (manifest, logs)
staying the record. A finished training waits at most ``3 * timeout_s`` for its last
metrics. A resumed training continues the MLflow run its folder names (``mlflow_run.json``)
and skips the steps that run already holds.

    python -m cprec_core.tracking ui --profile demo      # the MLflow UI on 127.0.0.1:5000
    python -m cprec_core.tracking runs --profile demo    # the runs of the profile, newest first
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

OFF_ENV = "CPREC_TRACKING"  # "off": log nothing (the Dagster resource's switch, for its children)
URI_ENV = "MLFLOW_TRACKING_URI"
URI_OVERRIDE_ENV = "CPREC_TRACKING_URI"  # the Dagster resource's tracking_uri, for its children
TAGS_ENV = "CPREC_TRACKING_TAGS"  # a JSON object of tags: the Dagster run, asset and partition

MAX_QUEUED = 10_000  # calls waiting for the server; beyond it metrics are dropped (counted)
BATCH = 900  # metrics per request (MLflow takes at most 1,000)
PARAMS_PER_BATCH = 100  # MLflow's limit per request
MAX_PARAM = 6000  # characters of a parameter value MLflow keeps

Log = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where runs go: the tracking URI, the experiment, and for the local store the folder
    its artifacts are written to."""

    uri: str
    experiment: str
    artifact_root: str | None
    timeout_s: float
    ui_url: str  # the UI that shows this store: the links in asset metadata
    register: bool

    def run_url(self, run_id: str) -> str:
        """The run's page in the UI (MLflow's ``/runs/<id>`` route finds its experiment)."""
        return f"{self.ui_url.rstrip('/')}/#/runs/{run_id}"


def target(profile, uri: str = "") -> Target | None:
    """Where ``profile``'s runs go, or None when tracking is off (the profile's
    ``tracking.enabled``, or ``CPREC_TRACKING=off``). ``uri`` (the Dagster resource's field;
    ``CPREC_TRACKING_URI`` in its trainers' processes) comes first, then the profile's
    ``tracking.uri``, ``MLFLOW_TRACKING_URI``, and the local SQLite store. A SQLite store
    keeps its artifacts in ``artifacts/`` beside it."""
    cfg = profile.tracking
    if not cfg.enabled or os.environ.get(OFF_ENV, "").lower() in ("off", "0", "false"):
        return None
    uri = (uri or os.environ.get(URI_OVERRIDE_ENV, "") or cfg.uri or os.environ.get(URI_ENV, "")
           or f"sqlite:///{profile.layout.mlflow_db.resolve()}")
    artifact_root, ui = None, cfg.ui_url
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working folder
        artifact_root = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    elif uri.startswith(("http://", "https://")):
        ui = uri  # the server serves its UI
    return Target(uri, cfg.experiment or f"cprec-{profile.name}", artifact_root, cfg.timeout_s,
                  ui, cfg.register)


# MLflow's HTTP settings as the user's environment had them when this module was imported
_HTTP_SET_BY_USER = {name for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT",
                                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES") if name in os.environ}


def bound_http(target: Target) -> None:
    """MLflow's HTTP calls time out after ``timeout_s`` without retries (its defaults, 120 s
    and 7 retries with back-off, would hold a finishing run for minutes), unless the user's
    environment set them."""
    values = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(target.timeout_s))),
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    for name, value in values.items():
        if name not in _HTTP_SET_BY_USER:
            os.environ[name] = value


def client(target: Target):
    """An ``MlflowClient`` of ``target`` (``bound_http`` first, on the thread that owns the
    process's environment)."""
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # after the import, which sets mlflow's own level:
        logging.getLogger(name).setLevel(logging.WARNING)  # table creation logs quietly
    if target.uri.startswith("sqlite:///"):
        Path(target.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)


def experiment_id(mlflow_client, target: Target) -> str:
    """The experiment's id, created where missing (two processes may race to create it)."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(target.experiment)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(target.experiment,
                                               artifact_location=target.artifact_root)
    except MlflowException:
        found = mlflow_client.get_experiment_by_name(target.experiment)
        if found is None:
            raise
        return found.experiment_id


# ---- names and values MLflow accepts --------------------------------------------------------

def metric_name(name: str) -> str:
    """``hr@1 (sum)`` -> ``hr_at_1_sum``: MLflow names take letters, digits, ``_ - . / :``
    and spaces, and must not look like a path that normalises to another."""
    name = re.sub(r"[^\w.\-/:]+", "_", name.replace("@", "_at_"))
    parts = [re.sub(r"_+", "_", p).strip("_.") for p in name.split("/")]
    return "/".join(p for p in parts if p) or "value"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``section.key`` parameters, values as text (lists as JSON), cut
    to the length MLflow keeps."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[metric_name(name)] = text if len(text) <= MAX_PARAM else text[:MAX_PARAM - 3] + "..."
    return out


def numbers(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric fields of a log row as metrics (``step`` and flags left out)."""
    return {metric_name(f"{prefix}{k}"): float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def dagster_tags() -> dict[str, str]:
    """The tags a Dagster run handed its trainer (``CPREC_TRACKING_TAGS``); a malformed
    value is ignored rather than failing the training."""
    try:
        tags = json.loads(os.environ.get(TAGS_ENV, "") or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def run_tags(kind: str, **values: Any) -> dict[str, str]:
    """``cprec.kind`` and the other ``cprec.*`` tags of a run (None values left out), the
    code revision and the Dagster run that launched it."""
    from cprec_core.provenance import git_revision

    tags = {"cprec.kind": kind, "mlflow.source.git.commit": git_revision()}
    tags.update({f"cprec.{k}": str(v) for k, v in values.items() if v is not None})
    return {**tags, **dagster_tags()}


def run_params(profile, section: str, config: Mapping[str, Any], *, data_version: str | None,
               seed: int | None, device: str, **extra: Any) -> dict[str, str]:
    """What every training run records: the resolved settings of its stage (``section.*``),
    the base model, the data version, the code revision, the seed and the device."""
    from cprec_core.provenance import git_revision, processor

    return flatten({"profile": profile.name, "base_model": profile.model.name,
                    "data_version": data_version, "seed": seed, "device": device,
                    "processor": processor(device), "git_revision": git_revision(), **extra,
                    section: dict(config)})


# ---- one run, logged from a background thread ------------------------------------------------

class NullTracker:
    """What a trainer logs to when tracking is off, or on a rank other than 0."""

    run_id: str | None = None
    experiment_id: str | None = None
    url: str | None = None

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_artifacts(self, paths: Iterable[Path], folder: str | None = None) -> None:
        pass

    def finished(self) -> None:
        pass

    def wait_open(self) -> str | None:
        return None


NULL_TRACKER = NullTracker()


class RunTracker(NullTracker):
    """One MLflow run, created (or continued) and written by a background thread.

    ``state_file``: where the run's id is kept for a resume; with ``resume`` and a state
    file of the same ``key`` (the plan's fingerprint) and store, the run is continued and
    what it already holds (each metric's steps) is not logged again."""

    def __init__(self, target: Target, *, name: str, params: Mapping[str, str],
                 tags: Mapping[str, str], key: str = "", state_file: Path | None = None,
                 resume: bool = False, log: Log = print):
        self.target, self.name, self.key = target, name, key
        self.params, self.tags = dict(params), dict(tags)
        self.state_file, self.resume, self.log = state_file, resume, log
        self.client = None
        self.logged: dict[str, int] = {}  # a continued run: the last step held per metric
        self.dropped = 0
        self.failed: str | None = None
        self.continued = False
        self._ok = False
        self._status = "KILLED"
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)
        self._opened = threading.Event()
        self._closing = threading.Event()
        self._abandoned = False  # close() stopped waiting: the thread ends after its call
        bound_http(target)  # here, not in the thread: os.environ is the process's
        self._thread = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
        self._thread.start()

    # -- what the training thread calls: each returns at once ----------------------------------
    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        self._put(("metrics", step, dict(values), int(time.time() * 1000)))

    def log_artifacts(self, paths: Iterable[Path], folder: str | None = None) -> None:
        self._put(("artifacts", [Path(p) for p in paths], folder))

    def finished(self) -> None:
        """The training ended: ``close`` marks the run FINISHED (else KILLED)."""
        self._ok = True

    def wait_open(self) -> str | None:
        """The run's id once it exists (waits at most ``timeout_s``); None where the run
        could not be made or its tracking failed."""
        self._opened.wait(self.target.timeout_s)
        return None if self.failed else self.run_id

    def close(self, status: str | None = None) -> None:
        """Ends the run (``status``, else FINISHED or KILLED) once the queue is sent, waiting
        at most ``3 * timeout_s``; what is still queued then is dropped with a warning. A run
        whose tracking failed is ended FAILED where the server still answers."""
        self._status = status or ("FINISHED" if self._ok else "KILLED")
        self._closing.set()
        self._thread.join(3 * self.target.timeout_s)
        if self._thread.is_alive():
            self._abandoned = True
            self._warn(f"the server did not answer within {3 * self.target.timeout_s:.0f} s;"
                       f" about {self._queue.qsize()} calls not sent")
        elif self.dropped:
            self._warn(f"{self.dropped} calls were dropped (more than {MAX_QUEUED} waiting)")

    def _put(self, item) -> None:
        if self.failed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    # -- the background thread -----------------------------------------------------------------
    def _work(self) -> None:
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - any failure of the server or store
            self._fail(exc)
        finally:
            self._opened.set()
        pending: list = []
        while not self._abandoned:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._send(pending)
                pending = []
                if self._closing.is_set():
                    break
                continue
            if item[0] == "metrics":
                pending.append(item)
                if len(pending) < BATCH and not self._queue.empty():
                    continue
            self._send(pending)
            pending = []
            if item[0] == "artifacts":
                self._call(self._artifacts, *item[1:])
        self._end()

    def _end(self) -> None:
        if self.client is None or self.run_id is None:
            return
        status = "FAILED" if self.failed else self._status
        try:  # once more where a call failed: a run never left RUNNING by a hiccup
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # noqa: BLE001
            if not self.failed:
                self._fail(exc)

    def _open(self) -> None:
        from mlflow.entities import Param

        self.client = client(self.target)
        self.experiment_id = experiment_id(self.client, self.target)
        previous = self._previous_run()
        if previous is not None:
            self.run_id, self.continued = previous, True
            self.client.update_run(previous, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.name, tags=self.tags)
            self.run_id = run.info.run_id
            items = [Param(k, v) for k, v in self.params.items()]
            for i in range(0, len(items), PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])
        self.url = self.target.run_url(self.run_id)
        if self.state_file is not None:
            staged = self.state_file.with_name(self.state_file.name + ".tmp")
            staged.write_text(json.dumps({"run_id": self.run_id, "uri": self.target.uri,
                                          "experiment_id": self.experiment_id,
                                          "key": self.key}))
            os.replace(staged, self.state_file)

    def _previous_run(self) -> str | None:
        """The run to continue: the state file's, where it is of the same plan and store
        and still exists (not deleted in the UI)."""
        if not (self.resume and self.state_file is not None and self.state_file.is_file()):
            return None
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if state.get("key") != self.key or state.get("uri") != self.target.uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(state["run_id"])
        except (MlflowException, KeyError):
            return None
        return run.info.run_id if run.info.lifecycle_stage == "active" else None

    def _held_through(self, key: str) -> int:
        """The last step of metric ``key`` a continued run already holds (-1: none)."""
        if key not in self.logged:
            history = self.client.get_metric_history(self.run_id, key)
            self.logged[key] = max((m.step for m in history), default=-1)
        return self.logged[key]

    def _send(self, items: list) -> None:
        if not items or self.failed:
            return
        from mlflow.entities import Metric

        def batch() -> None:
            metrics = [Metric(k, v, ts, step) for _, step, values, ts in items
                       for k, v in values.items()
                       if not self.continued or step > self._held_through(k)]
            for i in range(0, len(metrics), BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

        self._call(batch)

    def _artifacts(self, paths: list[Path], folder: str | None) -> None:
        for path in paths:
            if path.is_dir():  # its files under ``folder`` (default: the folder's name)
                self.client.log_artifacts(self.run_id, str(path), folder or path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)

    def _call(self, fn, *args) -> None:
        """``fn(*args)`` unless tracking failed; a SQLite store busy with another writer is
        tried twice more before that counts as a failure."""
        if self.failed or self.client is None:
            return
        for attempt in range(3):
            try:
                fn(*args)
                return
            except Exception as exc:  # noqa: BLE001 - the server, the network, the store
                if attempt < 2 and "database is locked" in str(exc):
                    time.sleep(0.5 * (attempt + 1))
                    continue
                self._fail(exc)
                return

    def _fail(self, exc: Exception) -> None:
        self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self._warn(f"{self.failed[:300]}; training goes on, its folder's files are the record")

    def _warn(self, message: str) -> None:
        self.log(f"warning: MLflow tracking ({self.target.uri}) of {self.name}: {message}")


@contextmanager
def training_run(profile, *, name: str, params: Mapping[str, str], tags: Mapping[str, str],
                 key: str = "", state_file: Path | None = None, resume: bool = False,
                 main: bool = True, log: Log = print) -> Iterator[NullTracker]:
    """The tracker of one training (a ``NullTracker`` when tracking is off or on a rank
    other than 0). The run ends FINISHED where the trainer called ``finished()``, KILLED
    where it stopped early (``--stop-after``), FAILED on an error."""
    where = target(profile) if main else None
    if where is None:
        yield NULL_TRACKER
        return
    tracker = RunTracker(where, name=name, params=params, tags=tags, key=key,
                         state_file=state_file, resume=resume, log=log)
    try:
        yield tracker
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()


def log_run(profile, *, name: str, tags: Mapping[str, str], metrics: Mapping[str, float],
            params: Mapping[str, str] | None = None, artifacts: Iterable[Path] = (),
            uri: str = "", log: Log = print) -> dict[str, str] | None:
    """A run logged at once (an evaluation, a leaderboard, a results table): its ids and
    link, or None where tracking is off or the server failed (reported through ``log``)."""
    where = target(profile, uri)
    if where is None:
        return None
    tracker = RunTracker(where, name=name, params=params or {}, tags=tags, log=log)
    tracker.log_step(0, metrics)
    tracker.log_artifacts(artifacts)
    tracker.finished()
    tracker.close()
    if tracker.failed or tracker.run_id is None:
        return None
    return {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id, "url": tracker.url}


# ---- the model registry ----------------------------------------------------------------------

RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what MLflow issues; checked before a filter


def _run_filter(run_id: str) -> str:
    """``run_id = '...'`` for a registry search, refusing an id that could change the
    filter (ids come from manifests on disk)."""
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not an MLflow run id")
    return f"run_id = '{run_id}'"

def register_adapter(profile, run_id: str, name: str, tags: Mapping[str, str],
                     uri: str = "") -> dict[str, str]:
    """A version of registered model ``name`` for the adapter run ``run_id`` logged
    (its ``adapter/`` artifacts), with ``tags`` (the data version among them); the version
    already made for that run where there is one. A run that did not finish with its
    adapter uploaded gets none (RuntimeError); raises what the server raises."""
    from mlflow.exceptions import MlflowException

    where = target(profile, uri)
    if where is None:
        raise RuntimeError("tracking is off")
    bound_http(where)
    mlflow_client = client(where)
    for version in mlflow_client.search_model_versions(_run_filter(run_id)):
        if version.name == name:
            return {"name": name, "version": str(version.version), "created": "no"}
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException:
        pass  # it exists
    run = mlflow_client.get_run(run_id)
    uploaded = bool(mlflow_client.list_artifacts(run_id, "adapter"))
    if run.info.status != "FINISHED" or not uploaded:
        raise RuntimeError(f"run {run_id} is {run.info.status} and holds"
                           f" {'an' if uploaded else 'no'} adapter/: its tracking did not"
                           " finish, so no version is made")
    source = f"{run.info.artifact_uri.rstrip('/')}/adapter"
    version = mlflow_client.create_model_version(name, source, run_id=run_id,
                                                 tags={k: str(v) for k, v in tags.items()})
    return {"name": name, "version": str(version.version), "created": "yes"}


def model_versions(profile, run_ids: Iterable[str], uri: str = "") -> list[dict[str, str]]:
    """The registered versions made from ``run_ids``: what a consumer of those adapters
    used. Empty where tracking is off; a server error propagates."""
    where = target(profile, uri)
    ids = [r for r in run_ids if r]
    if where is None or not ids:
        return []
    bound_http(where)
    mlflow_client = client(where)
    found = []
    for run_id in ids:
        for version in mlflow_client.search_model_versions(_run_filter(run_id)):
            found.append({"name": version.name, "version": str(version.version),
                          "run_id": run_id})
    return found


def model_name(profile, *parts: str) -> str:
    """A registered model's name: ``<profile>.<system>.<domain>`` (``<profile>.cpt.<variant>``)."""
    return ".".join([profile.name, *parts])


def describe(profile) -> str:
    """One line on where the profile's runs are and how many there are (``make demo`` ends
    with it)."""
    where = target(profile)
    if where is None:
        return "MLflow tracking is off (tracking.enabled, CPREC_TRACKING)"
    try:
        bound_http(where)
        mlflow_client = client(where)
        found = mlflow_client.get_experiment_by_name(where.experiment)
        runs = (mlflow_client.search_runs([found.experiment_id], max_results=1000)
                if found else [])
    except Exception as exc:  # noqa: BLE001 - the server or store
        return f"MLflow ({where.uri}) could not be read: {type(exc).__name__}: {str(exc)[:200]}"
    shown = "`make mlflow` shows them" if where.artifact_root else f"see {where.ui_url}"
    return (f"MLflow: {len(runs)}{'+' if len(runs) == 1000 else ''} runs in experiment"
            f" {where.experiment} ({where.uri}); {shown}")


# ---- the command line --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from cprec_core.cli import add_profile_arguments, profile_from_args

    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("command", choices=["ui", "runs"])
    parser.add_argument("--host", default="127.0.0.1",
                        help="the UI's address (no login: keep it on 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    where = target(profile)
    if where is None:
        print("error: tracking is off for this profile (tracking.enabled)", file=sys.stderr)
        return 2
    if args.command == "runs":
        bound_http(where)
        mlflow_client = client(where)
        found = mlflow_client.get_experiment_by_name(where.experiment)
        if found is None:
            print(f"no experiment {where.experiment!r} in {where.uri}")
            return 0
        for run in mlflow_client.search_runs([found.experiment_id], max_results=200):
            print(f"{run.info.run_id}  {run.info.status:9}  {run.info.run_name}")
        return 0
    if where.artifact_root is None:
        print(f"error: runs go to {where.uri}: open its own UI", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the MLflow UI has no login; {args.host} exposes it beyond this machine",
              file=sys.stderr)
    Path(where.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    print(f"MLflow UI of {where.uri} on http://{args.host}:{args.port} (no login)", flush=True)
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                               where.uri, "--default-artifact-root", where.artifact_root,
                               "--host", args.host, "--port", str(args.port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
