"""SFT on the tiny model: LoRA from the CPT adapter or fresh, the curriculum in the log, and
kill-and-resume giving the same adapter and projector."""

import dataclasses
import json
import shutil

import duckdb
import pytest
import torch
from safetensors.torch import load_file

from cprec_core.config import SASRecConfig, load_config_file
from cprec_core.data.build import main as build_corpus
from cprec_core.data.domain_users import build_domain_users, load_domain_data
from cprec_core.training.cpt import run as run_cpt
from cprec_core.training.next_item import train_next_item
from cprec_core.training.sft import SFTError, SFTTrainer, run


@pytest.fixture
def profile(tmp_path, fixture_config):
    """Corpus, domain users, SASRec and the WSA CPT adapter of the fixture, tiny model."""
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]) == 0
    base = load_config_file(fixture_config)
    profile = dataclasses.replace(
        base, data_dir=str(tmp_path / "data"),
        sft=dataclasses.replace(base.sft, batch_size=2, micro_batch=1, max_samples=24, negatives=2,
                                checkpoint_every=2, dtype="fp32"))
    with duckdb.connect(str(profile.layout.database)) as con:
        build_domain_users(con, "crime")
        data = load_domain_data(con, "crime")
    train_next_item(data, SASRecConfig(max_epochs=3, max_len=10), profile.layout.next_item_model("sasrec", "crime"),
                 log=lambda *_: None)
    run_cpt(profile, "wsa")
    return profile


def test_cprec_starts_from_the_cpt_adapter_and_llara_from_scratch(profile):
    cpt = load_file(profile.layout.cpt_adapter("wsa").adapter_weights)
    for system, from_cpt in (("cprec", True), ("llara", False)):
        trainer = SFTTrainer(profile, "crime", system)
        trainer.setup()
        state = {k.replace(".default", ""): v for k, v in trainer.peft_model.state_dict().items()
                 if "lora_" in k}
        b_weights = [k for k in cpt if "lora_B" in k]
        assert b_weights
        for key in b_weights:
            same = torch.equal(state[key].float(), cpt[key].float())
            assert same == from_cpt, (system, key)


def test_sft_logs_the_curriculum_and_writes_adapter_and_projector(profile):
    result = run(profile, "crime", "cprec")
    out = profile.layout.sft_run("cprec", "crime", 0).path
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    total = result["steps"]
    assert result["finished"] and len(rows) == total >= 4
    assert [r["p_hybrid"] for r in rows] == [round(s / total, 4) for s in range(total)]
    assert rows[0]["prompt"] == "text"  # probability 0 at the first step
    assert {"hybrid", "text"} >= {r["prompt"] for r in rows}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert set(load_file(out / "projector.safetensors")) == {"net.0.weight", "net.0.bias",
                                                             "net.2.weight", "net.2.bias"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["init_adapter"].endswith("cpt/wsa/adapter")
    assert manifest["samples"] == sum(r["samples"] for r in rows) <= 24


def test_killed_sft_resumes_to_the_same_weights(profile):
    total = run(profile, "crime", "llara")["steps"]
    out = profile.layout.sft_run("llara", "crime", 0).path
    reference = {**load_file(out / "adapter" / "adapter_model.safetensors"),
                 **load_file(out / "projector.safetensors")}
    shutil.rmtree(out)
    assert not run(profile, "crime", "llara", stop_after=3)["finished"]  # checkpoint at 2
    assert run(profile, "crime", "llara")["steps_run"] == total - 2
    resumed = {**load_file(out / "adapter" / "adapter_model.safetensors"),
               **load_file(out / "projector.safetensors")}
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=0, rtol=0)


def test_every_seed_gets_its_own_adapter(profile):
    """sft.seeds: LLaRA trains one adapter per seed (different LoRA init and order), the
    ablation systems only the first seed."""
    seeded = dataclasses.replace(profile, sft=dataclasses.replace(profile.sft, seeds=(0, 1)))
    result = run(seeded, "crime", "llara")
    assert result["finished"] and result["seeds"] == "0,1" and "final_loss_seed_1" in result
    a, b = (load_file(seeded.layout.sft_run("llara", "crime", s).adapter_weights)
            for s in (0, 1))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((seeded.layout.sft_run("llara", "crime", 1).manifest).read_text())["seed"] == 1
    assert seeded.sft.seeds_for("cprec_ds_only") == (0,)


def test_missing_inputs_are_clear_errors(profile):
    shutil.rmtree(profile.layout.next_item_model("sasrec", "crime").path)
    with pytest.raises(SFTError, match="no SASRec for domain 'crime'"):
        SFTTrainer(profile, "crime", "llara").setup()
    with pytest.raises(Exception, match="not a domain partition key"):
        SFTTrainer(profile, "../etc", "llara")
