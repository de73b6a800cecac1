"""MLflow tracking against a real local store (SQLite under the profile's data folder): what
a training run records, a resumed training continuing its run, and a tracking server that
is down or never answers not failing or stalling training."""

import dataclasses
import json
import socket
import threading
import time

import pytest

from cprec_core import tracking
from cprec_core.config import ConfigError, TrackingConfig, load_config_file
from cprec_core.data.build import main as build_corpus
from cprec_core.training.cpt import run as run_cpt


@pytest.fixture
def profile(tmp_path, fixture_config):
    """The fixture profile with its CPT corpus built."""
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]) == 0
    return dataclasses.replace(load_config_file(fixture_config), data_dir=str(tmp_path / "data"))


def store(profile):
    where = tracking.target(profile)
    return tracking.client(where), where


def only_run(profile):
    client, where = store(profile)
    experiment = client.get_experiment_by_name(where.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_names_and_values_mlflow_accepts():
    assert tracking.metric_name("hr@1 (sum)") == "hr_at_1_sum"
    assert tracking.metric_name("valid/loss per answer") == "valid/loss_per_answer"
    assert tracking.metric_name("cprec (shuffled emb)/hr@1 low") == "cprec_shuffled_emb/hr_at_1_low"
    assert tracking.metric_name("../x") == "x"
    flat = tracking.flatten({"cpt": {"lr": 0.001, "lora": {"r": 8}, "variants": ["wsa"]},
                             "seed": 0, "long": "x" * 7000})
    assert flat["cpt.lr"] == "0.001" and flat["cpt.lora.r"] == "8"
    assert flat["cpt.variants"] == '["wsa"]' and len(flat["long"]) == tracking.MAX_PARAM
    assert tracking.numbers({"step": 3, "loss": 1.5, "phase": "warmup", "ok": True}) == {"loss": 1.5}
    with pytest.raises(ConfigError, match="tracking.uri"):
        TrackingConfig(uri="ftp://x")
    with pytest.raises(ConfigError, match="ui_url"):
        TrackingConfig(ui_url="127.0.0.1:5000")


def test_tracking_off_writes_no_store(profile):
    result = run_cpt(profile, "wsa")  # the tests' default: CPREC_TRACKING=off
    assert result["finished"] and result.get("mlflow_run_id") is None
    assert not profile.layout.mlflow_dir.exists()
    assert tracking.target(dataclasses.replace(
        profile, tracking=TrackingConfig(enabled=False))) is None


def test_a_training_run_records_params_metrics_artifacts_and_tags(profile, tracked, monkeypatch):
    monkeypatch.setenv(tracking.TAGS_ENV, json.dumps({"dagster.run_id": "abc123",
                                                      "dagster.asset_key": "cpt_adapter"}))
    result = run_cpt(profile, "wsa")
    assert result["finished"]
    client, run = only_run(profile)
    manifest = profile.layout.cpt_adapter("wsa").read_manifest()
    assert manifest.mlflow_run_id == run.info.run_id == result["mlflow_run_id"]
    assert run.info.status == "FINISHED" and run.info.run_name == "cpt wsa"
    params = run.data.params
    assert params["base_model"] == "tiny-random" and params["seed"] == "0"
    assert params["data_version"] == manifest.corpus_fingerprint
    assert params["cpt.lr"] == str(profile.cpt.lr) and params["cpt.lora.r"] == str(profile.cpt.lora.r)
    assert params["git_revision"] == manifest.git_revision and params["device"] == "cpu"
    assert params["phase_steps.anneal"] == str(manifest.phase_steps["anneal"])
    tags = run.data.tags
    assert tags["cprec.kind"] == "cpt" and tags["cprec.variant"] == "wsa"
    assert tags["dagster.run_id"] == "abc123" and tags["dagster.asset_key"] == "cpt_adapter"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, manifest.steps + 1))
    rows = [json.loads(x) for x in profile.layout.cpt_adapter("wsa").train_log.read_text().splitlines()]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [r["loss"] for r in rows]
    for name in ("lr", "tokens_per_second", "seconds"):
        assert len(client.get_metric_history(run.info.run_id, name)) == manifest.steps
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"manifest.json", "train_log.jsonl", "curves.png", "adapter"} <= files
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter
    # the artifacts live under the profile's data folder, not the working directory
    assert run.info.artifact_uri.startswith(profile.layout.mlflow_artifacts.resolve().as_uri())

    version = tracking.register_adapter(profile, run.info.run_id, "fixture.cpt.wsa",
                                        {"data_version": manifest.corpus_fingerprint})
    again = tracking.register_adapter(profile, run.info.run_id, "fixture.cpt.wsa", {})
    assert version["version"] == again["version"] == "1" and again["created"] == "no"
    found = tracking.model_versions(profile, [run.info.run_id])
    assert found == [{"name": "fixture.cpt.wsa", "version": "1", "run_id": run.info.run_id}]
    with pytest.raises(ValueError, match="not an MLflow run id"):  # ids come from files
        tracking.model_versions(profile, ["x' OR name LIKE '%"])
    registered = client.get_model_version("fixture.cpt.wsa", "1")
    assert registered.tags["data_version"] == manifest.corpus_fingerprint
    assert registered.source.endswith("/adapter")


def test_a_resumed_training_continues_its_run(profile, tracked):
    partial = run_cpt(profile, "wsa", stop_after=5)  # "killed" after step 5; checkpoint at 3
    assert not partial["finished"]
    client, first = only_run(profile)
    assert first.info.status == "KILLED"
    assert len(client.get_metric_history(first.info.run_id, "loss")) == 5
    with pytest.raises(RuntimeError, match="no version is made"):  # no adapter uploaded
        tracking.register_adapter(profile, first.info.run_id, "fixture.cpt.wsa", {})
    resumed = run_cpt(profile, "wsa")  # redoes steps 4 and 5: logged once
    assert resumed["finished"]
    client, run = only_run(profile)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, resumed["steps"] + 1))
    # a restart (another plan) opens a new run
    assert run_cpt(profile, "wsa", restart=True)["mlflow_run_id"] != run.info.run_id


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers (a hung tracking server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("server", ["down", "silent"])
def test_an_unreachable_or_hung_server_never_fails_or_stalls_training(
        profile, tracked, server, request, capsys):
    port = closed_port() if server == "down" else request.getfixturevalue("silent_server")
    remote = dataclasses.replace(profile, tracking=TrackingConfig(
        uri=f"http://127.0.0.1:{port}", timeout_s=1.0))
    straight = run_cpt(profile, "wsa", restart=True)  # tracked locally: the reference time
    started = time.perf_counter()
    result = run_cpt(remote, "wsa", restart=True)
    seconds = time.perf_counter() - started
    assert result["finished"] and result.get("mlflow_run_id") is None
    assert result["final_loss"] == straight["final_loss"]
    # bounded: the manifest waits for the run at most timeout_s, the end at most 3 * timeout_s
    assert seconds < straight["seconds"] + 10
    assert "warning: MLflow tracking (http://127.0.0.1" in capsys.readouterr().out
    assert profile.layout.cpt_adapter("wsa").read_manifest().mlflow_run_id is None


def test_only_rank_zero_tracks(profile, tracked):
    """Under accelerate launch every process runs the trainer; only rank 0 opens a run."""
    from types import SimpleNamespace

    from cprec_core.training.loop import tracked_run

    def trainer(main: bool):
        return SimpleNamespace(profile=profile, run=profile.layout.cpt_adapter("wsa"),
                               accelerator=SimpleNamespace(is_main_process=main,
                                                           num_processes=2),
                               reporter=SimpleNamespace(log=print), device="cpu")

    with tracked_run(trainer(False), "cpt", "cpt wsa", "cpt", profile.cpt, data_version="x",
                     seed=0, key="k", tags={}) as tracker:
        assert tracker is tracking.NULL_TRACKER
    assert not profile.layout.mlflow_dir.exists()
    profile.layout.cpt_adapter("wsa").path.mkdir(parents=True)
    with tracked_run(trainer(True), "cpt", "cpt wsa", "cpt", profile.cpt, data_version="x",
                     seed=0, key="k", tags={}) as tracker:
        assert tracker.wait_open()
    client, run = only_run(profile)
    assert run.info.status == "KILLED"  # ended without finished(): a stopped training
    assert run.data.params["processes"] == "2"


def test_a_call_that_fails_ends_the_run_failed_and_names_no_run(profile, tracked, monkeypatch):
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_batch

    def refuse_metrics(self, run_id, metrics=(), **kwargs):
        if metrics:
            raise RuntimeError("the store refused a batch")
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", refuse_metrics)
    lines = []
    tracker = tracking.RunTracker(tracking.target(profile), name="refused", params={"a": "1"},
                                  tags={}, log=lines.append)
    tracker.log_step(1, {"loss": 1.0})
    tracker.finished()
    tracker.close()
    assert tracker.wait_open() is None  # a manifest names no half-tracked run
    client, run = only_run(profile)
    assert run.info.status == "FAILED" and run.data.params == {"a": "1"}
    assert len(lines) == 1 and "the store refused a batch" in lines[0]


def test_the_resource_uri_ranks_above_the_profile(profile, monkeypatch, tmp_path):
    mine = dataclasses.replace(profile, tracking=TrackingConfig(uri="http://team:5000"))
    monkeypatch.delenv("CPREC_TRACKING")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-shell:5000")
    assert tracking.target(mine).uri == "http://team:5000"  # the profile's, then the shell's
    assert tracking.target(profile).uri == "http://from-shell:5000"
    monkeypatch.setenv(tracking.URI_OVERRIDE_ENV, f"sqlite:///{tmp_path}/run.db")
    where = tracking.target(mine)  # what the mlflow resource hands its trainers
    assert where.uri == f"sqlite:///{tmp_path}/run.db"
    assert where.artifact_root == (tmp_path / "artifacts").as_uri()
    assert where.run_url("abc") == "http://127.0.0.1:5000/#/runs/abc"
