"""The Dagster UI, used the way a person uses it, in a real browser.

`dagster dev` (webserver + daemon) runs on loopback with a temporary DAGSTER_HOME and the tiny
fixture profile; Playwright drives Debian's chromium headless: it opens the asset graph,
launches a materialisation of one partition of `domain_users` from the asset page, waits for
the run to succeed and reads the metadata the page shows. Skipped where chromium or
Playwright is missing (CI); `make test-ui` installs both and runs it.

With CPREC_SCREENSHOTS=<folder> the screenshots of the asset graph and of the asset page are
written there (docs/img is how the README's pictures were made).
"""

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from cprec_assets.definitions import defs
from cprec_assets.resources import REPO_ROOT, build_resources

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(
    sync_playwright is None or not Path(CHROMIUM).is_file(),
    reason="browser test needs Debian's chromium and the playwright package:"
           " run `make test-ui` (apt-get install chromium; pip install -e '.[ui]')")

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster dev exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def dagster_dev(tmp_path, fixture_config):
    """`dagster dev` on 127.0.0.1 with the data stage already materialised (so the domain
    partitions exist); yields the UI's base URL and the environment it runs with."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    data_dir = tmp_path / "data"
    resources = build_resources(config_file=str(fixture_config), data_dir=str(data_dir),
                                landing_dir=str(tmp_path / "landing"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        stage = dg.AssetSelection.groups("corpus") - dg.AssetSelection.assets("domain_users")
        assert dg.materialize([*defs.assets, *defs.asset_checks], selection=stage,
                              instance=instance, resources=resources).success
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "CPREC_CONFIG": str(fixture_config),
           "CPREC_DATA_DIR": str(data_dir), "CPREC_LANDING_DIR": str(tmp_path / "landing")}
    log = tmp_path / "dagster-dev.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/server_info", proc, log)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", env=env)
    finally:
        proc.terminate()  # dagster dev stops its webserver and daemon on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def dismiss_welcome(page) -> None:
    page.wait_for_timeout(1500)
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.click()


def test_launch_a_partition_from_the_ui_and_read_its_metadata(dagster_dev):
    shots = os.environ.get("CPREC_SCREENSHOTS")
    ui, env = dagster_dev.url, dagster_dev.env
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(30_000)

        # the asset graph, with every group of the project
        page.goto(f"{ui}/asset-groups", wait_until="networkidle")
        dismiss_welcome(page)
        for group in ("corpus", "collab", "cpt", "sft", "evaluation"):
            expect(page.get_by_text(group, exact=True).first).to_be_visible()
        if shots:  # every group expanded (kept across a reload, which fits the view)
            shot = browser.new_page(viewport={"width": 1800, "height": 1300})
            shot.goto(f"{ui}/asset-groups", wait_until="networkidle")
            groups = shot.locator('[aria-label="unfold_more"]')
            expect(groups.first).to_be_visible()
            for _ in range(10):  # an expanded group shows another icon
                if not groups.count():
                    break
                groups.first.click()
                shot.wait_for_timeout(500)
            shot.reload(wait_until="networkidle")
            shot.locator('[aria-label="panel_show_right"]').first.click()
            for _ in range(5):
                shot.locator('[aria-label="zoom_out"]').first.click()
                shot.wait_for_timeout(300)
            shot.wait_for_timeout(1000)
            shot.screenshot(path=str(Path(shots) / "asset-graph.png"))
            shot.close()

        # launch domain_users[crime] from its page: Materialize -> partition -> Launch 1 run
        page.goto(f"{ui}/assets/domain_users", wait_until="networkidle")
        dismiss_welcome(page)
        page.get_by_role("button", name="Materialize…").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_text("crime", exact=True).first.click()
        dialog.get_by_text("Launch runs to materialize domain_users").click()  # closes the list
        launch = dialog.get_by_role("button", name="Launch 1 run")
        expect(launch).to_be_enabled()
        launch.click()
        expect(page.get_by_role("dialog")).to_have_count(0)  # launched: the dialog closed

        # the run goes through the queue and the daemon; the page shows its metadata
        deadline = time.monotonic() + 240
        while True:
            page.goto(f"{ui}/assets/domain_users?partition=crime",
                      wait_until="networkidle")
            body = page.inner_text("body")
            if "history_tercile_cuts" in body:
                break
            assert time.monotonic() < deadline, "no materialisation of domain_users[crime] shown"
            page.wait_for_timeout(3000)
        # the metadata table as shown: the fixture's Crime domain has 40 users and 8 items
        rows = {}
        for r in page.get_by_role("row").all_inner_texts():  # first: the metadata table
            rows.setdefault(r.split("\t")[0].strip(), r)
        assert "Crime" in rows["domain"] and rows["items"].rstrip().endswith("8")
        assert len(rows["data_version"].split()[-1]) == 16
        expect(page.get_by_text("Row count")).to_be_visible()
        assert "40" in page.get_by_text("Row count").locator("..").inner_text()
        if shots:
            page.screenshot(path=str(Path(shots) / "asset-metadata.png"), full_page=True)

        # and the run is listed as a success
        page.goto(f"{ui}/runs", wait_until="networkidle")
        expect(page.get_by_text("Success").first).to_be_visible()

        if shots:  # the evaluation table, as the asset page shows it
            with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
                assert dg.materialize(
                    [*defs.assets, *defs.asset_checks], partition_key="crime",
                    selection=["candidate_sets", "sasrec", "evaluation"], instance=instance,
                    resources=build_resources(config_file=env["CPREC_CONFIG"],
                                              data_dir=env["CPREC_DATA_DIR"])).success
            page.goto(f"{ui}/assets/evaluation?partition=crime", wait_until="networkidle")
            expect(page.get_by_text("results", exact=True).first).to_be_visible()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(Path(shots) / "evaluation-table.png"), full_page=True)
        browser.close()


@pytest.fixture
def mlflow_ui(tmp_path, fixture_config, tracked):
    """Two CPT runs of the tiny model (variants ``wsa`` and ``ds_only``) in the fixture
    profile's local MLflow store, and ``python -m cprec_core.tracking ui`` (what `make mlflow`
    runs) on a free loopback port; yields the UI's URL and the two runs' ids."""
    from cprec_core.config import load_config_file
    from cprec_core.data.build import main as build_corpus
    from cprec_core.training.cpt import run as run_cpt

    data_dir = tmp_path / "data"
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(data_dir)]) == 0
    profile = dataclasses.replace(load_config_file(fixture_config), data_dir=str(data_dir))
    runs = [run_cpt(profile, variant)["mlflow_run_id"] for variant in ("wsa", "ds_only")]
    port = free_port()
    log = tmp_path / "mlflow-ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cprec_core.tracking", "ui", "--config", str(fixture_config),
             "--data-dir", str(data_dir), "--port", str(port)],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc, log)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", runs=runs)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def test_mlflow_ui_shows_two_training_runs_loss_curves(mlflow_ui):
    """`make mlflow`'s UI lists the training runs and draws their loss curves on one chart."""
    shots = os.environ.get("CPREC_SCREENSHOTS")
    ui, (wsa, ds_only) = mlflow_ui.url, mlflow_ui.runs
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(f"{ui}/#/runs/{wsa}")  # the asset metadata's link (MLflow polls: no idle)
        expect(page.get_by_text("cpt wsa").first).to_be_visible()
        # the metric page (the run table's "Plot chart"): both runs' loss on one chart
        page.goto(f'{ui}/#/metric?runs=["{wsa}","{ds_only}"]&metric="loss"&experiments=["1"]'
                  '&plot_metric_keys=["loss"]&plot_layout={}&x_axis=step&y_axis_scale=linear'
                  '&line_smoothness=1&show_point=true&deselected_curves=[]'
                  '&last_linear_y_axis_range=[]')
        expect(page.get_by_text("2/2")).to_be_visible()  # completed runs
        legend = page.locator(".legend, .legendtext, body")
        expect(legend.get_by_text("cpt wsa (loss)").first).to_be_visible()
        expect(legend.get_by_text("cpt ds_only (loss)").first).to_be_visible()
        rows = page.get_by_role("row").all_inner_texts()
        assert any(r.startswith("cpt wsa") for r in rows) and any(
            r.startswith("cpt ds_only") for r in rows), rows
        close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
        if close.count():  # MLflow 3's assistant panel covers a third of the page
            close.first.click()
        page.wait_for_timeout(1500)
        if shots:
            page.screenshot(path=str(Path(shots) / "mlflow-loss-curves.png"))
        browser.close()
