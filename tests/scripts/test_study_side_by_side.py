"""scripts/study_side_by_side.sh, the study's stage runner, with a stand-in for Python that
records when each job starts and ends: lanes, failures and the pools' restore at exit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "study_side_by_side.sh"

# the stand-in: `-m cprec_assets.demo --stage ...` sleeps and logs, `-c` is the look-up
# (variants, systems, domains), `-` the pools helper (prints the limits it replaced)
FAKE_PY = r"""#!/usr/bin/env bash
case "$1" in
  -m) if [ "$2" = cprec_assets.demo ]; then
        shift 2
        echo "start $(date +%s.%N) ${OMP_NUM_THREADS:-all} $*" >>"$TRACE"
        sleep 0.4
        echo "end $(date +%s.%N) $*" >>"$TRACE"
        if [ -n "$FAIL" ] && [[ "$*" == *"$FAIL"* ]]; then echo "boom: $*"; exit 3; fi
        echo "$*: ok in 0.4 s"
      else echo "results $*" >>"$TRACE"; fi ;;
  -c) printf 'wsa ds_only\nllara cprec\ncrime sci-fi\n' ;;
  -)  cat >/dev/null; shift; echo "pools $*" >>"$TRACE"
      if [ "$1" != "${1#*=}" ]; then :; else printf 'train=1 duckdb_write= '; fi ;;
esac
"""


def run_study(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    trace = tmp_path / "trace.txt"
    full_env = {**os.environ, "PY": str(fake), "TRACE": str(trace), "LOGS": str(tmp_path / "logs"),
                "CPREC_PROFILE": "study", "RESULTS_OUT": str(tmp_path / "RESULTS.md"), **env}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=120)
    return done, trace.read_text().splitlines()


def most_at_once(trace: list[str]) -> int:
    events = sorted((float(line.split()[1]), 1 if line.startswith("start") else -1)
                    for line in trace if line.startswith(("start", "end")))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.skipif(os.name != "posix", reason="bash script")
def test_two_lanes_run_every_job_two_at_a_time_and_restore_the_pools(tmp_path):
    done, trace = run_study(tmp_path, MAX_JOBS="2", POOL_LIMIT="2")
    assert done.returncode == 0, done.stdout + done.stderr
    starts = [line.split(None, 3)[3] for line in trace if line.startswith("start")]
    assert starts[0] == "--stage corpus"
    # stage 1: CPT variants with the domains' data and SASRec; then 2 x 2 SFT; then 2 evaluations
    assert sorted(starts[1:5]) == sorted(["--stage cpt --variant=wsa", "--stage cpt --variant=ds_only",
                                          "--stage sasrec --domain=crime",
                                          "--stage sasrec --domain=sci-fi"])
    assert sorted(starts[5:9]) == sorted(f"--stage sft --domain={d} --system={s}"
                                         for d in ("crime", "sci-fi") for s in ("llara", "cprec"))
    assert sorted(starts[9:11]) == ["--stage evaluation --domain=crime",
                                    "--stage evaluation --domain=sci-fi"]
    assert starts[11] == "--stage summary"
    assert most_at_once(trace) == 2
    threads = {line.split()[2] for line in trace if line.startswith("start") and "--stage cpt" in line}
    assert threads == {str(max(1, os.cpu_count() // 2))}  # the cores split between two lanes
    pools = [line for line in trace if line.startswith("pools")]
    assert pools == ["pools 2", "pools train=1 duckdb_write="]  # raised, then put back
    assert "pools restored: train=1 duckdb_write=" in done.stdout


@pytest.mark.skipif(os.name != "posix", reason="bash script")
def test_a_failed_job_stops_the_study_after_its_stage_and_is_named(tmp_path):
    done, trace = run_study(tmp_path, MAX_JOBS="3", FAIL="--domain=crime --system=cprec")
    assert done.returncode != 0
    assert "FAILED:" in done.stdout and "sft-crime-cprec.log" in done.stdout
    assert "boom: --stage sft --domain=crime --system=cprec" in done.stdout  # the log's tail
    assert not any("--stage evaluation" in line for line in trace)
    assert most_at_once(trace) <= 3
    assert not any(line.startswith("pools") for line in trace)  # no POOL_LIMIT: untouched
