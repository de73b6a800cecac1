"""``--dry-run`` of the trainers on a config-only Llama-2-7B folder (no weights anywhere):
the plan is built with the fixture's corpus and its tiny tokenizer (the only tokenizer
there is), the memory estimate matches what 7B in bf16 needs, FSDP divides the sharded
parts by the number of processes, and no weight is ever loaded."""

import re

import pytest
import transformers
import yaml
from transformers import LlamaConfig

from cprec_core.config import ConfigError, load_profile
from cprec_core.data.build import main as build_corpus
from cprec_core.training import cpt

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                 max_position_embeddings=4096, rms_norm_eps=1e-5)


@pytest.fixture
def llama7b_config(tmp_path):
    """A folder holding only Llama-2-7B's config.json, as ``save_pretrained`` writes it."""
    folder = tmp_path / "Llama-2-7b-hf"
    LlamaConfig(**LLAMA2_7B).save_pretrained(folder)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    return folder


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to load a model's weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(cpt, "load_base_model", refuse)


def write_config(tmp_path, fixture_config, **sections):
    config = yaml.safe_load(fixture_config.read_text())
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "dry.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def gb(out: str, part: str) -> float:
    return float(re.search(rf"^  {part}\s+([\d.]+) GB", out, re.M).group(1))


def test_cpt_dry_run_estimates_7b_without_weights(tmp_path, fixture_config, llama7b_config,
                                                   no_weights, capsys):
    data = tmp_path / "data"
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(data)]) == 0
    path = write_config(tmp_path, fixture_config, model={"name": str(llama7b_config)},
                        cpt={"dtype": "bf16", "gradient_checkpointing": True,
                             "block_size": 1024, "blocks_per_step": 8, "micro_batch": 4})
    capsys.readouterr()
    assert cpt.main(["--config", str(path), "--data-dir", str(data), "--dry-run"]) == 0
    one = capsys.readouterr().out
    assert "6.738 B parameters" in one and "LlamaDecoderLayer" in one
    assert "19.99 M trainable" in one  # r 8 on the 7 projections of 32 layers
    assert 13.3 < gb(one, "weights") < 13.6  # 6.74 B x 2 bytes
    assert gb(one, "adam state") == pytest.approx(0.16, abs=0.01)
    assert "steps of 8 blocks" in one and "tokenizer:" in one
    assert not any((data / "fixture").rglob("adapter_model.safetensors"))

    fsdp = write_config(tmp_path, fixture_config, model={"name": str(llama7b_config)},
                        train={"distributed": "fsdp"},
                        cpt={"dtype": "bf16", "gradient_checkpointing": True,
                             "block_size": 1024, "blocks_per_step": 8, "micro_batch": 4})
    assert cpt.main(["--config", str(fsdp), "--data-dir", str(data), "--dry-run",
                     "--processes", "4"]) == 0
    four = capsys.readouterr().out
    assert "4 process(es), sharding fsdp" in four
    for part in ("weights", "lora weights", "adam state"):
        assert gb(four, part) == pytest.approx(gb(one, part) / 4, abs=0.011)
    assert gb(four, "activations") == gb(one, "activations")  # per process, not sharded


def test_dry_run_rejects_a_plan_the_model_cannot_take(tmp_path, fixture_config, llama7b_config,
                                                      no_weights, capsys):
    data = tmp_path / "data"
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(data)]) == 0
    path = write_config(tmp_path, fixture_config, model={"name": str(llama7b_config)},
                        cpt={"block_size": 8192, "blocks_per_step": 4, "micro_batch": 2})
    assert cpt.main(["--config", str(path), "--data-dir", str(data), "--dry-run"]) == 2
    assert "max_position_embeddings 4096" in capsys.readouterr().err


def test_sft_and_dpo_dry_runs_plan_their_widest_row(tmp_path, fixture_config, llama7b_config,
                                                    no_weights, monkeypatch, capsys):
    """SFT (from a CPT adapter not trained yet) and DPO (no SFT adapter, no pairs yet) plan
    from the domain's samples alone; neither loads a model."""
    import duckdb

    from cprec_core.config import SASRecConfig, load_config_file
    from cprec_core.data.domain_users import build_domain_users, load_domain_data
    from cprec_core.training import dpo, hybrid_run, sft
    from cprec_core.training.next_item import train_next_item

    monkeypatch.setattr(hybrid_run, "load_base_model", no_weights_loader)  # SFT's and DPO's
    data = tmp_path / "data"
    path = write_config(tmp_path, fixture_config, model={"name": str(llama7b_config)},
                        sft={"dtype": "bf16"}, train={"distributed": "fsdp"})
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(data)]) == 0
    profile = load_config_file(path)
    layout = type(profile.layout)(data, profile.name)
    with duckdb.connect(str(layout.database)) as con:
        build_domain_users(con, "crime")
        domain = load_domain_data(con, "crime")
    train_next_item(domain, SASRecConfig(max_epochs=1, max_len=10),
                    layout.next_item_model("sasrec", "crime"), log=lambda *_: None)
    capsys.readouterr()
    assert sft.main(["--config", str(path), "--data-dir", str(data), "--domain", "crime",
                     "--system", "cprec", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "SFT cprec seed 0" in out and "not trained yet" in out
    assert 13.3 < gb(out, "weights") < 13.6
    assert re.search(r"micro-batch 1 x \d+ tokens, gradient checkpointing off", out)
    assert not any(layout.root.rglob("adapter_model.safetensors"))
    assert sft.main(["--config", str(path), "--data-dir", str(data), "--domain", "crime",
                     "--system", "cprec", "--dry-run", "--processes", "2"]) == 0
    assert "2 process(es), sharding fsdp" in capsys.readouterr().out

    assert dpo.main(["--config", str(path), "--data-dir", str(data), "--domain", "crime",
                     "--system", "cprec_dpo", "--dry-run", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "DPO cprec_dpo seed 0" in out and "cprec_rank (not trained yet)" in out
    assert "2 process(es), sharding ddp" in out  # FSDP is CPT's and SFT's; DPO's is DDP
    assert 13.3 < gb(out, "weights") < 13.6 and "ddp gradient buckets" in out
    assert not any(layout.root.rglob("pairs.parquet"))


def no_weights_loader(*args, **kwargs):
    raise AssertionError("the dry run loaded weights")


def test_paper_7b_profile_dry_runs_on_a_config_only_folder(tmp_path, fixture_config,
                                                           llama7b_config, no_weights, capsys):
    """The paper-7b profile's settings with its model folder pointed at the config-only
    one and the fixture's data: the plan is built and the estimate printed."""
    paper = load_profile("paper-7b")
    assert paper.model.name == "data/models/Llama-2-7b-hf"
    assert paper.cpt.gradient_checkpointing and paper.device == "auto"
    assert (paper.cpt.lora.r, paper.cpt.lora.alpha) == (8, 32)
    assert paper.sft.batch_size == 128 and paper.sft.epochs == 5
    data = tmp_path / "data"
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(data)]) == 0
    fixture = yaml.safe_load(fixture_config.read_text())
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump({"profile": "paper-7b", "name": "fixture",
                                    "data": fixture["data"], "device": "cpu",
                                    "corpus": fixture["corpus"],
                                    "model": {"name": str(llama7b_config)}}))
    capsys.readouterr()
    assert cpt.main(["--config", str(path), "--data-dir", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "gradient checkpointing on" in out and "6.738 B parameters" in out


def test_4bit_is_refused_on_cpu_before_any_weight(tmp_path, fixture_config, llama7b_config,
                                                 no_weights, capsys):
    from cprec_core.models.quantization import QuantizationError, quantization_kwargs

    with pytest.raises(QuantizationError, match="model.quantization: 4bit needs a CUDA GPU"):
        quantization_kwargs("4bit", "cpu")
    assert quantization_kwargs("none", "cpu") == {}
    with pytest.raises(ConfigError, match="model.quantization"):
        load_profile("demo", {"model": {"quantization": "8bit"}})
    data = tmp_path / "data"
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(data)]) == 0
    path = write_config(tmp_path, fixture_config,
                        model={"name": str(llama7b_config), "quantization": "4bit"})
    assert cpt.main(["--config", str(path), "--data-dir", str(data), "--dry-run"]) == 2
    assert "model.quantization: 4bit needs a CUDA GPU" in capsys.readouterr().err


def test_train_distributed_picks_a_shipped_accelerate_config():
    """``train.distributed`` names the file the launch command passes as --config_file;
    DPO runs under DDP when CPT and SFT run under FSDP."""
    from accelerate.commands.config.config_args import load_config_from_file

    from cprec_core.training.distributed import accelerate_config_file

    assert accelerate_config_file(load_profile("demo")) is None
    ddp = load_profile("demo", {"train": {"distributed": "ddp"}})
    fsdp = load_profile("demo", {"train": {"distributed": "fsdp"}})
    assert accelerate_config_file(ddp, "sft").name == "ddp.yaml"
    assert accelerate_config_file(fsdp, "cpt").name == "fsdp.yaml"
    assert accelerate_config_file(fsdp, "sft").name == "fsdp.yaml"
    assert accelerate_config_file(fsdp, "dpo").name == "ddp.yaml"
    sharded = load_config_from_file(str(accelerate_config_file(fsdp)))
    assert sharded.distributed_type == "FSDP"
    assert sharded.fsdp_config["fsdp_use_orig_params"] is True
    assert sharded.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert sharded.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert load_config_from_file(str(accelerate_config_file(ddp))).distributed_type == "MULTI_GPU"
    with pytest.raises(ConfigError, match="train.distributed"):
        load_profile("demo", {"train": {"distributed": "zero3"}})
    with pytest.raises(ConfigError, match="4bit"):
        load_profile("demo", {"train": {"distributed": "fsdp"},
                              "model": {"quantization": "4bit"}})
