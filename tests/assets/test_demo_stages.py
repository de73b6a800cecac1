"""`python -m cprec_assets.demo --stage ...`: names are checked before anything runs, a
killed run of an earlier command does not hold its pool slot, and the summary is rendered
where `make results` renders its tables."""

import os
from contextlib import contextmanager

import dagster as dg
import pytest

from cprec_assets import demo
from cprec_assets.partitions import domain_partitions
from cprec_core.evaluation import results


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("CPREC_PROFILE", "demo")
    return dg.DagsterInstance.get()


def test_domain_stages_need_partitions_and_known_names(instance):
    with pytest.raises(SystemExit, match="run --stage corpus first"):
        demo.main(["--stage", "evaluation"])
    instance.add_dynamic_partitions(domain_partitions.name, ["crime"])
    with pytest.raises(SystemExit, match=r"--domain \['horror'\]: not one of \['crime'\]"):
        demo.main(["--stage", "sft", "--domain", "horror"])
    with pytest.raises(SystemExit, match=r"--system \['gru4rec'\]"):
        demo.main(["--stage", "sft", "--domain", "crime", "--system", "gru4rec"])
    with pytest.raises(SystemExit,
                       match=r"--system \[.gru4rec.\]: not one of \[.llara., .*.cprec_dpo.\]"):
        demo.main(["--stage", "evaluation", "--system", "gru4rec"])  # not an LLM system
    with pytest.raises(SystemExit, match=r"--variant \['wsd'\]"):
        demo.main(["--stage", "cpt", "--variant", "wsd"])
    with pytest.raises(SystemExit, match=r"--system \['llara'\]: not one of \['sasrec'"):
        demo.main(["--stage", "sasrec", "--system", "llara"])  # not a next-item system


def test_the_sasrec_stage_trains_only_the_named_next_item_systems(instance, monkeypatch):
    instance.add_dynamic_partitions(domain_partitions.name, ["crime"])
    ran = []
    monkeypatch.setattr(demo, "run", lambda label, selection, *args, **kwargs: ran.append(
        selection))
    demo.main(["--stage", "sasrec", "--system", "sasrec"])
    data, models = ({k.to_user_string() for k in s.resolve(demo.EVERYTHING)} for s in ran)
    assert data == {"domain_users", "candidate_sets"} and models == {"sasrec"}


def test_a_killed_demo_run_gives_its_pool_slot_back(instance):
    """A demo run whose process was killed stays STARTED with its pool slot claimed, which
    would hold every later step of that pool; the next demo command marks it failed and
    frees the slot. A run whose process is alive is left alone."""
    import socket
    import subprocess
    import sys

    from dagster._core.storage.dagster_run import DagsterRun

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    storage = instance.event_log_storage
    storage.set_concurrency_slots("train", 1)
    runs = {}
    for name, pid in (("killed", gone.pid), ("alive", os.getpid())):
        run = DagsterRun(job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED,
                         tags={demo.PID_TAG: str(pid), demo.HOST_TAG: socket.gethostname()})
        instance.add_run(run)
        runs[name] = run.run_id
    assert storage.claim_concurrency_slot("train", runs["killed"], "sft_adapter").is_claimed
    assert not storage.claim_concurrency_slot("train", runs["alive"], "sft_adapter").is_claimed

    assert demo.release_dead_runs(instance) == [runs["killed"]]
    assert instance.get_run_by_id(runs["killed"]).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(runs["alive"]).status == dg.DagsterRunStatus.STARTED
    assert storage.claim_concurrency_slot("train", runs["alive"], "sft_adapter").is_claimed
    assert demo.release_dead_runs(instance) == []


def test_the_summary_is_printed_by_the_reports_renderer(instance, monkeypatch, capsys):
    """demo.py only orchestrates: the leaderboard rebuilt, then cprec_core.evaluation.results'
    summary printed (its tables are render's: tests/core/evaluation/test_results_report.py)."""

    class Resource:
        profile = "the profile"

        @contextmanager
        def connect(self):
            yield "the database"

    ran, rendered = [], []
    monkeypatch.setattr(demo, "run", lambda label, *args, **kwargs: ran.append(label))
    monkeypatch.setattr(results, "summary",
                        lambda *args: rendered.append(args) or "the report's tables")
    instance.add_dynamic_partitions(domain_partitions.name, ["crime"])
    demo.print_summary(Resource(), instance)
    assert ran == ["leaderboard"]
    assert rendered == [("the database", "the profile", ["crime"])]
    assert capsys.readouterr().out == "\nthe report's tables\n"
