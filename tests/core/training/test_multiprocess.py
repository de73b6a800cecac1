"""The same CPT and SFT commands under `accelerate launch` with two CPU processes: each rank
reads its share of every step's blocks or samples and gradients are averaged, so the losses
match one process. Under FSDP full-shard (cprec_core/training/accelerate/fsdp.yaml) too, and
a killed FSDP run resumes from its gathered checkpoint to the weights of an uninterrupted one.

`accelerate launch --cpu` starts a single process whatever --num_processes says (accelerate
1.16 runs several CPU processes only through mpirun), so several processes are launched
with the shipped ddp.yaml / fsdp.yaml and the trainer's ``Accelerator(cpu=True)`` puts them
on the CPU with gloo; the log line's process count proves it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from cprec_core.data.build import main as build_corpus

ACCELERATE = Path(__file__).resolve().parents[3] / "cprec_core" / "training" / "accelerate"
FSDP_ON_CPU = Path(__file__).resolve().parent / "fsdp_on_cpu.py"


def accelerate_launch(module: str, processes: int, fsdp: bool, *args: str) -> str:
    """Runs ``python -m module args`` under accelerate launch on ``processes`` CPU processes
    (DDP, or FSDP through fsdp_on_cpu.py); its stdout."""
    if fsdp:
        how = ["--config_file", str(ACCELERATE / "fsdp.yaml")]
        target = [str(FSDP_ON_CPU), module]
    else:
        how = (["--config_file", str(ACCELERATE / "ddp.yaml")] if processes > 1 else ["--cpu"])
        target = ["-m", module]
    command = [sys.executable, "-m", "accelerate.commands.launch", *how,
               "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", *target, *args]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{processes} process(es)" in done.stdout, done.stdout[-2000:]
    return done.stdout


def launch(config, data_dir, processes: int, *args: str, fsdp: bool = False) -> str:
    """Runs the CPT trainer under accelerate launch; its stdout."""
    return accelerate_launch("cprec_core.training.cpt", processes, fsdp, "--config", str(config),
                             "--data-dir", str(data_dir), "--variant", "wsa", *args)


def train_log(data_dir, name: str) -> list[dict]:
    log = data_dir / name / "cpt" / "wsa" / "train_log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()]


def cpt(config, data_dir, processes: int, name: str) -> list[dict]:
    launch(config, data_dir, processes, "--stop-after", "3")
    return train_log(data_dir, name)


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


def sft_data(tmp_path, fixture_config, system: str = "llara", **train):
    """The fixture's SFT inputs (corpus, domain users, SASRec of crime) under ``data/``;
    the config written with no LoRA dropout (its masks differ between ranks by design),
    micro-batches of one, and ``train`` as its train section."""
    import duckdb

    from cprec_core.config import SASRecConfig, load_config_file
    from cprec_core.data.domain_users import build_domain_users, load_domain_data
    from cprec_core.evaluation.candidates import build_candidate_sets
    from cprec_core.layout import Layout
    from cprec_core.training.next_item import train_next_item

    config = yaml.safe_load(fixture_config.read_text())
    config["cpt"]["lora"] = {"dropout": 0.0}
    config["sft"].update({"batch_size": 2, "micro_batch": 1})
    config["sft"]["rank"]["epochs"] = 2  # 6 steps of the candidate-aware systems
    config["train"] = train
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    data_dir = tmp_path / "data"
    assert build_corpus(["--config", str(path), "--data-dir", str(data_dir)]) == 0
    profile = load_config_file(path)
    layout = Layout(data_dir, profile.name)
    with duckdb.connect(str(layout.database)) as con:
        build_domain_users(con, "crime")
        build_candidate_sets(con, "crime", negatives=2)  # the validation sample
        data = load_domain_data(con, "crime")
    train_next_item(data, SASRecConfig(max_epochs=2, max_len=10),
                    layout.next_item_model("sasrec", "crime"), log=lambda *_: None)
    return path, data_dir, layout.sft_run(system, "crime", 0)


def launch_sft(path, data_dir, processes: int, *args: str, fsdp: bool = False,
               system: str = "llara") -> str:
    """Runs ``system``'s SFT on crime under accelerate launch; its stdout."""
    return accelerate_launch("cprec_core.training.sft", processes, fsdp, "--config", str(path),
                             "--data-dir", str(data_dir), "--domain", "crime",
                             "--system", system, *args)


def sft_log(run) -> list[dict]:
    return [json.loads(x) for x in run.train_log.read_text().splitlines()]


def move_run(run, to: Path) -> Path:
    """Moves a finished SFT run aside so that the next launch trains from scratch."""
    import shutil

    shutil.move(str(run.path), str(to))
    return to


def test_sft_two_processes_give_the_losses_of_one(tmp_path, fixture_config):
    """SFT under DDP: text-only steps leave the projector unused, which DDP must accept."""
    path, data_dir, run = sft_data(tmp_path, fixture_config)
    logs = {}
    for processes in (1, 2):
        launch_sft(path, data_dir, processes)
        logs[processes] = sft_log(run)
        move_run(run, tmp_path / f"p{processes}")
    assert [r["prompt"] for r in logs[1]] == [r["prompt"] for r in logs[2]]
    for a, b in zip(logs[1], logs[2]):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (a, b)


@pytest.mark.parametrize("system", ["llara", "llara_rank"])
def test_sft_under_fsdp_gives_the_losses_of_one_process_and_resumes_exactly(
        tmp_path, fixture_config, system):
    """LoRA and LLaRA's projector sharded over two CPU processes: the per-step losses of one
    process through text and hybrid steps alike; killed after a checkpoint and started
    again, the adapter and projector of an uninterrupted FSDP run (both gathered whole for
    the checkpoint and scattered back); the final files are those one process writes. The
    candidate-aware system too: tree forwards, validation scoring, best-adapter selection."""
    path, data_dir, run = sft_data(tmp_path, fixture_config, system, distributed="fsdp")
    launch_sft(path, data_dir, 1, system=system)
    single = move_run(run, tmp_path / "single")
    assert "2 process(es) under FSDP" in launch_sft(path, data_dir, 2, fsdp=True, system=system)
    full = move_run(run, tmp_path / "fsdp")
    launch_sft(path, data_dir, 2, "--stop-after", "3", fsdp=True, system=system)
    resumed = launch_sft(path, data_dir, 2, fsdp=True, system=system)
    assert "resumed from" in resumed and "step 2)" in resumed, resumed[-2000:]
    if system == "llara_rank":  # selection on the validation sample, under FSDP too
        assert "validation at step 4" in resumed and "validation at step 6" in resumed
    killed = run.path

    def log(folder):
        return [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]

    one, sharded = log(single), log(full)
    assert [r["prompt"] for r in one] == [r["prompt"] for r in sharded]
    assert {"text", "hybrid"} == {r["prompt"] for r in one} or system != "llara"
    for a, b in zip(one, sharded):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (a, b)
    assert log(killed) == [{**r, "seconds": k["seconds"]} for r, k in zip(sharded, log(killed))]

    def weights(folder):
        return {**load_file(folder / "adapter" / "adapter_model.safetensors"),
                **{f"projector.{k}": v for k, v in
                   load_file(folder / "projector.safetensors").items()}}

    base, fsdp, again = weights(single), weights(full), weights(killed)
    assert set(base) == set(fsdp) == set(again) and any("projector" in k for k in base)
    for key in base:
        assert (fsdp[key] - again[key]).abs().max() < 1e-6, key
        # one process against two: the gradients are summed in another order, and Adam's
        # division by sqrt(v) carries that rounding (measured up to 1.2e-6 on one element);
        # 1e-5 is still 20 to 50 times less than one step moves a weight (lr 2e-4 to 5e-4)
        assert (fsdp[key] - base[key]).abs().max() < 1e-5, key


def test_fsdp_two_processes_give_the_losses_of_one_and_resume_exactly(tmp_path, fixture_config):
    """LoRA under FSDP full-shard over two CPU processes: the per-step losses of one process;
    killed after a checkpoint and started again, it ends with the adapter of an
    uninterrupted FSDP run (the LoRA and Adam state gathered on rank 0 and scattered back)."""
    from cprec_core.config import load_config_file
    from cprec_core.training.cpt import run

    config = yaml.safe_load(fixture_config.read_text())
    config["cpt"]["lora"] = {"dropout": 0.0}
    config["cpt"]["checkpoint_every"] = 3
    data_dir = tmp_path / "data"
    paths = {}
    for name in ("one", "fsdp", "killed"):
        config["name"] = name
        config["train"] = {"distributed": "none" if name == "one" else "fsdp"}
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config))
        assert build_corpus(["--config", str(paths[name]), "--data-dir", str(data_dir)]) == 0
    import dataclasses
    one = dataclasses.replace(load_config_file(paths["one"]), data_dir=str(data_dir))
    run(one, "wsa")
    launch(paths["fsdp"], data_dir, 2, fsdp=True)
    launch(paths["killed"], data_dir, 2, "--stop-after", "4", fsdp=True)
    resumed = launch(paths["killed"], data_dir, 2, fsdp=True)
    assert "resumed from" in resumed and "starting at step 3" in resumed

    single, sharded = train_log(data_dir, "one"), train_log(data_dir, "fsdp")
    assert [r["step"] for r in single] == [r["step"] for r in sharded]
    for a, b in zip(single, sharded):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (a, b)
    assert train_log(data_dir, "killed") == [
        {**r, "seconds": k["seconds"]} for r, k in zip(sharded, train_log(data_dir, "killed"))]

    def adapter(name):
        return load_file(data_dir / name / "cpt" / "wsa" / "adapter" / "adapter_model.safetensors")

    base, full, killed = adapter("one"), adapter("fsdp"), adapter("killed")
    assert set(base) == set(full) == set(killed) and base
    for key in base:
        assert (full[key] - killed[key]).abs().max() < 1e-6, key
        assert (full[key] - base[key]).abs().max() < 1e-4, key
