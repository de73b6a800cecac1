"""`make demo` on the tiny profile as a user runs it (`python -m cprec_assets.demo`, its own
Dagster instance): a second run with nothing changed materialises nothing; after one target
domain's data changes only that domain's chain runs again; a demo killed mid-CPT resumes from
the materialised assets and the trainer's last checkpoint, and leaves no trainer behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_env(tmp_path, fixture_config) -> dict[str, str]:
    """The fixture profile trimmed to one system per family that reads CPT (the CPRec
    adapter, SASRec on the CPT adapter's title vectors), scoring 6 cases per domain."""
    config = yaml.safe_load(fixture_config.read_text())
    config["sft"]["systems"] = ["cprec"]
    config.update(dpo={"systems": []}, item_text={"systems": ["sasrec_text_cpt"]},
                  evaluation={"max_cases": 6, "shuffled_ablation": False},
                  recommend={**config["recommend"], "rerank_users": 2})
    fixture_config.write_text(yaml.safe_dump(config))
    home = tmp_path / "dagster_home"
    home.mkdir()
    return {**os.environ, "DAGSTER_HOME": str(home), "CPREC_CONFIG": str(fixture_config),
            "CPREC_DATA_DIR": str(tmp_path / "data"), "CPREC_NUM_THREADS": "1"}


def demo(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cprec_assets.demo", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def ran(stdout: str) -> dict[str, str]:
    """stage -> the assets it ran, from the stage-time table the demo ends with."""
    table = stdout[stdout.index("Stage times"):]
    rows = re.findall(r"^\| (.+?) \| [\d.]+ \| (.*?) \|$", table, re.MULTILINE)
    return {stage: assets for stage, assets in rows if stage != "total"}


def add_interaction(movielens_dir: Path, genre_first: int, genre_last: int) -> None:
    """User 1 rates, after everything else, an item of ids ``genre_first..genre_last`` (one
    genre of the fixture) that it has not rated: that domain's test item changes."""
    inter = movielens_dir / "fixture.inter"
    lines = inter.read_text().splitlines()
    rated = {line.split("\t")[1] for line in lines[1:] if line.startswith("1\t")}
    item = next(i for i in range(genre_first, genre_last + 1) if str(i) not in rated)
    inter.write_text("\n".join([*lines, f"1\t{item}\t4\t990000000"]) + "\n")


def kill_mid_cpt(env: dict[str, str], checkpoints: Path, pattern: str) -> None:
    """Start the demo, SIGKILL its process alone once CPT has written a checkpoint (the
    trainer, its grandchild under accelerate, gets no signal), and check the trainer ends."""
    process = subprocess.Popen([sys.executable, "-m", "cprec_assets.demo"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("step-*")):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no CPT checkpoint within 5 minutes"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the CPT trainer outlived the killed demo"
        time.sleep(0.2)


def test_the_demo_resumes_after_a_kill_and_reruns_only_what_changed(
        demo_env, tmp_path, movielens_dir):
    checkpoints = tmp_path / "data" / "fixture" / "cpt" / "wsa" / "checkpoints"
    kill_mid_cpt(demo_env, checkpoints, f"cprec_core.training.cpt .*{tmp_path}")

    # resumed: the corpus is not rebuilt, CPT continues from its checkpoint, the rest runs
    out = demo(demo_env)
    first = ran(out)
    assert first["corpus"] == "up to date"
    assert re.search(r"resumed from \S+step-\d+ \(step \d+\)", out), out[-3000:]
    assert "sft_adapter" in first["sft_adapter[horror]"] and first["recommend[crime]"]

    # nothing changed: nothing runs
    again = ran(demo(demo_env))
    assert set(again.values()) == {"up to date"}, again

    # a new Horror interaction (the fixture's Horror ids are 35-42): the data stage and that
    # domain's chain run; CPT reads the source domains only, so it resumes at its end with
    # the same data version, and nothing of Crime past its data runs
    add_interaction(movielens_dir, 35, 42)
    after = ran(demo(demo_env))
    assert after["corpus"] != "up to date"
    assert after["item embeddings[wsa]"] == "up to date"
    assert after["domain[crime]"] in ("up to date", "candidate_sets, domain_users"), after
    crime = [s for s, assets in after.items() if "[crime]" in s and s != "domain[crime]"]
    assert all(after[s] == "up to date" for s in crime), after
    for stage in ("next-item[horror]", "sft_adapter[horror]", "evaluation[horror]",
                  "recommend[horror]"):
        assert after[stage] != "up to date", after
