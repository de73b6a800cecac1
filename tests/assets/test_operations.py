"""Operating the graph: new data through the landing sensor and the automation conditions,
two domain partitions at once through the multiprocess executor, and the CLI backfill."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from cprec_assets.definitions import defs
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import REPO_ROOT, build_resources
from cprec_assets.sensors import landing_sensor

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
CORPUS = dg.AssetSelection.groups("corpus") - dg.AssetSelection.assets("domain_users")


def project(tmp_path: Path, fixture_config: Path) -> dg.Definitions:
    """The real definitions, with the resources pointed at the fixture profile."""
    resources = build_resources(config_file=str(fixture_config), data_dir=str(tmp_path / "data"),
                                landing_dir=str(tmp_path / "landing"))
    return dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs,
                          sensors=defs.sensors, resources=resources)


def western_log(path: Path, users: int = 20, items: int = 8, per_user: int = 6) -> Path:
    """A week of a new genre, as a Parquet file without a domain column (the folder names it);
    the fixture's users come back, so the user ids overlap with the MovieLens fixture."""
    rows = [{"user_id": str(u + 1), "item_id": f"w{(u + k) % items}", "title": f"Western {(u + k) % items}",
             "timestamp": 890_000_000 + u * 1000 + k, "rating": 4.0}
            for u in range(users) for k in range(per_user)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    path.with_name(path.name + ".done").touch()
    return path


def materialize(d: dg.Definitions, instance, selection, partition_key=None, run_config=None,
                tags=None) -> dg.ExecuteInProcessResult:
    result = dg.materialize([*d.assets, *d.asset_checks], selection=selection, instance=instance,
                            resources=d.resources, partition_key=partition_key,
                            run_config={**QUIET, **(run_config or {})}, tags=tags)
    assert result.success
    return result


def metadata(result, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def run_automation(d, instance, cursor, selection):
    """One tick of the automation sensor, in process; executes what it requests."""
    tick = dg.evaluate_automation_conditions(defs=d, instance=instance, asset_selection=selection,
                                             cursor=cursor)
    requested, runs = {}, {}
    for key in selection.resolve(d.resolve_asset_graph()):
        partitions = tick.get_requested_partitions(key)
        if partitions:
            requested[key.to_user_string()] = set(partitions)
        for partition in partitions:  # one run per partition, like the daemon
            runs.setdefault(partition, []).append(key)
    for partition, keys in sorted(runs.items(), key=lambda kv: str(kv[0])):
        materialize(d, instance, keys, partition)
    return tick.cursor, requested


def latest(instance, asset: str, partition: str) -> dg.AssetMaterialization:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization


def test_new_file_reaches_a_new_domain_partition(tmp_path, fixture_config):
    d = project(tmp_path, fixture_config)
    with dg.instance_for_test() as instance:
        stage = materialize(d, instance, CORPUS)
        raw_before = metadata(stage, "raw_interactions")["dagster/row_count"]
        assert sorted(instance.get_dynamic_partitions(domain_partitions.name)) == ["crime", "horror"]
        scope = dg.AssetSelection.assets("domain_users", "candidate_sets", "sasrec")
        cursor, _ = run_automation(d, instance, None, scope)

        # nothing new: the sensor skips
        context = dg.build_sensor_context(instance=instance, resources=d.resources)
        assert landing_sensor(context).skip_reason.skip_message.startswith(f"{tmp_path / 'landing'}: no new")

        # a new file lands; the sensor requests corpus_job with it, once
        western_log(tmp_path / "landing" / "Western" / "week-1.parquet")
        result = landing_sensor(context)
        (request,) = result.run_requests
        assert request.run_config["ops"]["landed_interactions"]["config"]["files"] == [
            "Western/week-1.parquet"]
        context.update_cursor(result.cursor)
        assert landing_sensor(dg.build_sensor_context(
            instance=instance, resources=d.resources, cursor=result.cursor)).run_requests == []
        job = d.resolve_job_def("corpus_job")
        run = job.execute_in_process(instance=instance, run_config={**QUIET, **request.run_config},
                                     tags=request.tags)
        assert run.success
        assert all(e.passed for e in run.get_asset_check_evaluations())
        landed = metadata(run, "landed_interactions")
        assert (landed["deliveries_loaded"], landed["rows_loaded_now"]) == (1, 120)
        raw_after = metadata(run, "raw_interactions")["dagster/row_count"]
        assert raw_after == raw_before + 120
        assert "| Western | target (new domain from landed files) |" in metadata(
            run, "interactions")["new_domains_from_landing"]
        assert sorted(instance.get_dynamic_partitions(domain_partitions.name)) == [
            "crime", "horror", "western"]

        # automation, one tick: the data assets of every domain follow (eager); SASRec only
        # for the new domain (a new partition); the other domains' models wait for the cron
        cursor, first = run_automation(d, instance, cursor, scope)
        assert first == {"domain_users": {"crime", "horror", "western"},
                         "candidate_sets": {"crime", "horror", "western"},
                         "sasrec": {"western"}}
        cursor, second = run_automation(d, instance, cursor, scope)
        assert second == {}

        users, sasrec = (latest(instance, key, "western") for key in ("domain_users", "sasrec"))
        assert users.metadata["dagster/row_count"].value == 20
        # the model says which data it saw: domain_users[western]'s data version
        assert sasrec.metadata["data_version"].value == users.metadata["data_version"].value
        assert "dagster/input_data_version/domain_users" in sasrec.tags  # staleness in the UI

        # the same file delivered again under another name adds nothing
        copy = tmp_path / "landing" / "Western" / "week-1-resent.parquet"
        copy.write_bytes((tmp_path / "landing" / "Western" / "week-1.parquet").read_bytes())
        copy.with_name(copy.name + ".done").touch()
        again = landing_sensor(dg.build_sensor_context(
            instance=instance, resources=d.resources, cursor=result.cursor))
        (request,) = again.run_requests
        rerun = job.execute_in_process(instance=instance, run_config={**QUIET, **request.run_config})
        landed = metadata(rerun, "landed_interactions")
        assert (landed["deliveries_loaded"], landed["deliveries_duplicate"]) == (0, 1)
        assert metadata(rerun, "raw_interactions")["dagster/row_count"] == raw_after


def domain_data_job() -> dg.JobDefinition:
    """A DuckDB writer (domain_users, pool duckdb_write) and a reader (SASRec, pool train) per
    domain, as a reconstructable job for the multiprocess executor (resources from
    CPREC_CONFIG / CPREC_DATA_DIR, like the code location)."""
    job = dg.define_asset_job("domain_data", selection=["domain_users", "sasrec"],
                              partitions_def=domain_partitions,
                              executor_def=dg.multiprocess_executor)
    return dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job],
                          resources=build_resources()).resolve_job_def("domain_data")


def test_two_domain_partitions_at_once_without_lock_errors(tmp_path, fixture_config):
    """Two runs (crime, horror) started together, each on the multiprocess executor, on an
    instance with this repository's dagster.yaml. Pool slots order the DuckDB writers, and
    every DuckDB connection waits for the file lock (cprec_core.data.db): with SQLite run storage
    two processes can win the same slot at the same moment (SQLite has no SELECT ... FOR
    UPDATE), so the wait on the lock is what guarantees there is no lock error."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "CPREC_CONFIG": str(fixture_config),
           "CPREC_DATA_DIR": str(tmp_path / "data")}
    d = project(tmp_path, fixture_config)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        materialize(d, instance, CORPUS)
    dagster = str(Path(sys.executable).parent / "dagster")
    procs = {key: subprocess.Popen(
        [dagster, "job", "execute", "-f", __file__, "-a", "domain_data_job",
         "--tags", json.dumps({"dagster/partition": key})],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for key in ("crime", "horror")}
    outputs = {key: p.communicate(timeout=400)[0] for key, p in procs.items()}
    for key, p in procs.items():
        assert p.returncode == 0, outputs[key][-3000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="domain_data"))
        assert sorted(r.tags["dagster/partition"] for r in runs) == ["crime", "horror"]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        spans = []
        for run in runs:
            starts, ends = {}, {}
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is None:
                    continue
                assert not event.is_step_failure, event
                if event.is_step_start:
                    starts[event.step_key] = record.timestamp
                elif event.is_step_success:
                    ends[event.step_key] = record.timestamp
            spans += [(starts[s], ends[s], run.tags["dagster/partition"], s) for s in starts]
        pools = {p: instance.event_log_storage.get_concurrency_info(p).slot_count
                 for p in ("duckdb_write", "train")}
    assert pools == {"duckdb_write": 1, "train": 1}  # default_limit: 1 from dagster.yaml
    assert sorted(s[3] for s in spans) == ["domain_users", "domain_users", "sasrec", "sasrec"]
    # the two runs did run at the same time
    window = {k: (min(s[0] for s in spans if s[2] == k), max(s[1] for s in spans if s[2] == k))
              for k in ("crime", "horror")}
    assert window["crime"][0] < window["horror"][1] and window["horror"][0] < window["crime"][1]


def test_cli_backfill_of_two_domains(tmp_path, fixture_config):
    """The documented command submits one backfill with the two partitions (the daemon of
    `dagster dev` runs it; here it is checked in the instance)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {"DAGSTER_HOME": str(home), "CPREC_CONFIG": str(fixture_config),
           "CPREC_DATA_DIR": str(tmp_path / "data"), "PATH": str(Path(sys.executable).parent)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(domain_partitions.name, ["crime", "horror"])
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "job", "backfill", "-w",
         str(REPO_ROOT / "workspace.yaml"), "-j", "domain_job", "--partitions", "crime,horror",
         "--noprompt"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (backfill,) = instance.get_backfills()
        assert sorted(backfill.partition_names) == ["crime", "horror"]
