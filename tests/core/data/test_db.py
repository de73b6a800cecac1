"""Commands that write the database wait for its lock, as the assets do."""

import subprocess
import sys
import time

import pytest

from cprec_core.data.db import DatabaseBusy, connect

HOLD = ("import sys; from cprec_core.data.db import connect;"
        " con = connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()")


def _hold(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_locked_database_is_waited_for_within_a_bound_naming_the_holder(tmp_path):
    path = tmp_path / "x.duckdb"
    holder = _hold(path)
    told = []
    try:
        with pytest.raises(DatabaseBusy, match=f"still locked after 0.3 s by .*PID {holder.pid}"):
            connect(path, wait_seconds=0.3, on_wait=told.append)
    finally:
        holder.stdin.close()
        holder.wait()
    assert len(told) == 1 and f"PID {holder.pid}" in told[0]
    connect(path).close()  # free again


def test_two_build_commands_on_one_data_folder_both_finish(tmp_path, fixture_config):
    """Both builds start while a third process holds the lock: each says whom it waits for,
    then they run in turn."""
    data_dir = tmp_path / "data"
    database = data_dir / "fixture" / "cprec.duckdb"
    holder = _hold(database)
    command = [sys.executable, "-m", "cprec_core.data.build", "--config", str(fixture_config),
               "--data-dir", str(data_dir)]
    logs = [tmp_path / f"build-{k}.err" for k in range(2)]
    builds = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"))
              for log in logs]
    try:
        deadline = time.monotonic() + 120
        while not all(f"PID {holder.pid}" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(b.poll() is None for b in builds), [log.read_text() for log in logs]
            time.sleep(0.2)
    finally:
        holder.stdin.close()
        holder.wait()
    assert [b.wait(timeout=300) for b in builds] == [0, 0], [log.read_text() for log in logs]
    with connect(database, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM cpt_corpus").fetchall()[0][0] > 0
