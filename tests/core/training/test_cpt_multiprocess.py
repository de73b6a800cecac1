"""The same CPT command under `accelerate launch` with two CPU processes: each rank reads its
share of every step's blocks and gradients are averaged, so the losses match one process."""

import json
import os
import subprocess
import sys

import yaml

from cprec_core.data.build import main as build_corpus


def cpt(config, data_dir, processes: int, name: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu",
               "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1",
               "-m", "cprec_core.training.cpt", "--config", str(config), "--data-dir", str(data_dir),
               "--variant", "wsa", "--stop-after", "3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = data_dir / name / "cpt" / "wsa" / "train_log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()]


def test_two_processes_give_the_losses_of_one(tmp_path, fixture_config):
    config = yaml.safe_load(fixture_config.read_text())
    config["cpt"]["lora"] = {"dropout": 0.0}  # dropout masks differ between ranks by design
    runs = {}
    for processes in (1, 2):
        config["name"] = f"p{processes}"
        path = tmp_path / f"p{processes}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert build_corpus(["--config", str(path), "--data-dir", str(tmp_path / "data")]) == 0
        runs[processes] = cpt(path, tmp_path / "data", processes, f"p{processes}")
    one, two = runs[1], runs[2]
    assert [r["step"] for r in two] == [1, 2, 3]
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (a, b)


def test_sft_two_processes_give_the_losses_of_one(tmp_path, fixture_config):
    """SFT under DDP: text-only steps leave the projector unused, which DDP must accept."""
    import duckdb

    from cprec_core.config import SASRecConfig, load_config_file
    from cprec_core.data.domain_users import build_domain_users, load_domain_data
    from cprec_core.layout import Layout
    from cprec_core.training.next_item import train_next_item

    config = yaml.safe_load(fixture_config.read_text())
    config["cpt"]["lora"] = {"dropout": 0.0}
    config["sft"].update({"batch_size": 2, "micro_batch": 1})
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    data_dir = tmp_path / "data"
    assert build_corpus(["--config", str(path), "--data-dir", str(data_dir)]) == 0
    profile = load_config_file(path)
    layout = Layout(data_dir, profile.name)
    database = layout.database
    with duckdb.connect(str(database)) as con:
        build_domain_users(con, "crime")
        data = load_domain_data(con, "crime")
    train_next_item(data, SASRecConfig(max_epochs=2, max_len=10),
                    layout.next_item_model("sasrec", "crime"), log=lambda *_: None)
    logs = {}
    for processes in (1, 2):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu",
                   "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--num_cpu_threads_per_process", "1", "-m", "cprec_core.training.sft",
                   "--config", str(path), "--data-dir", str(data_dir), "--domain", "crime",
                   "--system", "llara"]
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        out = data_dir / profile.name / "sft" / "llara" / "crime" / "seed-0"
        logs[processes] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        import shutil
        shutil.rmtree(out)
    assert [r["prompt"] for r in logs[1]] == [r["prompt"] for r in logs[2]]
    for a, b in zip(logs[1], logs[2]):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (a, b)
