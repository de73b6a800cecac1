"""Any backbone, not only the tiny Llama: tiny Llama, Qwen2 and Gemma 3 checkpoints saved
with ``save_pretrained``, each beside a tokenizer that follows its family's conventions
(Llama: ``<s>`` prepended, ``</s>``, no pad; Qwen2: no BOS, pad = EOS ``<|endoftext|>``,
a padded vocabulary; Gemma 3: ``<bos>`` prepended, ``<eos>``, its own ``<pad>``, embeddings
scaled by sqrt(hidden), sliding-window layers). Each is loaded by folder (and one by id from
the Hugging Face cache); the placeholder, the hybrid embeddings and the LoRA targets are
checked on each, and CPT, SFT and scoring run end to end on each."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import duckdb
import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

from cprec_core.config import LoraSettings, SASRecConfig, load_config_file
from cprec_core.models.hybrid import Projector, add_placeholder_token, hybrid_embeds
from cprec_core.models.loader import load_base_model
from cprec_core.models.lora import apply_lora, resolve_target_modules
from cprec_core.models.tokenizer import ModelLoadError, load_tokenizer
from cprec_core.prompts import (LLARA_TEMPLATE, PLACEHOLDER, UNIFIED_TEMPLATE, Case,
                                encode_prompt)

FAMILIES = ("llama", "qwen2", "gemma3")
MODEL_CLASS = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gemma3": Gemma3ForCausalLM}
# what the tokenizer's training texts cover (byte-level BPE: anything else still encodes)
WORDS = ("Usual Suspects, The Rock Seven (Se7en) Birdcage Heat Fargo Casino Scream Alien Babe"
         " Clueless Kids Jumanji Sabrina Nixon Othello Persuasion Copycat Powder Balto Drama"
         " Comedy Crime Horror Thriller Mystery Film 1980 1985 1990 1995 1999 0 1 2 3 4 5 6 7 8 9")
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=1024)
GEMMA_WINDOW = 24  # shorter than the prompts, so the sliding-window layers matter


def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the family's special tokens and BOS/EOS/pad conventions."""
    specials, kwargs, bos = {
        "llama": (["<unk>", "<s>", "</s>"],
                  dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), "<s>"),
        "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"), None),
        "gemma3": (["<pad>", "<eos>", "<bos>", "<unk>"],
                   dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                        unk_token="<unk>"), "<bos>"),
    }[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [UNIFIED_TEMPLATE, LLARA_TEMPLATE, WORDS] * 4
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def family_model(family: str, tok) -> torch.nn.Module:
    """Llama untied, Qwen2 tied with spare vocabulary rows, Gemma 3 tied and scaled."""
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False, **SMALL))
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tok) + 8, bos_token_id=None, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **SMALL))
    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tok), head_dim=16, query_pre_attn_scalar=16, sliding_window=GEMMA_WINDOW,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **SMALL))


def save_backbone(folder: Path, family: str) -> Path:
    tok = family_tokenizer(family)
    family_model(family, tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {f: save_backbone(root / f, f) for f in FAMILIES}


def load(folder: Path, tmp_path: Path):
    tok = load_tokenizer(str(folder), tmp_path / "cache")
    return tok, load_base_model(str(folder), tmp_path / "cache", torch.float32, tok).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_folder_loads_with_its_conventions(backbones, family, tmp_path):
    tok, model = load(backbones[family], tmp_path)
    assert type(model) is MODEL_CLASS[family]
    starts = tok("Heat")["input_ids"][0]
    assert (starts == tok.bos_token_id) == (family != "qwen2")  # BOS prepended or not
    assert tok.pad_token_id is None if family == "llama" else tok.pad_token_id is not None
    assert (tok.pad_token_id == tok.eos_token_id) == (family == "qwen2")


def test_a_model_id_in_the_hugging_face_cache_loads_offline(backbones, tmp_path, monkeypatch):
    """The hub cache's layout (refs/main -> snapshots/<commit>/files), read offline."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--cprec-test--tiny-qwen2"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in backbones["qwen2"].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # the loader finds the snapshot without the Hub; offline mode makes sure of it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tok = load_tokenizer("cprec-test/tiny-qwen2", tmp_path / "cache")
    model = load_base_model("cprec-test/tiny-qwen2", tmp_path / "cache", torch.float32, tok)
    assert type(model) is Qwen2ForCausalLM and tok.eos_token == "<|endoftext|>"
    with pytest.raises(ModelLoadError, match="model.name 'cprec-test/not-cached'"):
        load_tokenizer("cprec-test/not-cached", tmp_path / "cache")


def test_a_missing_folder_is_a_clear_error_naming_model_name(tmp_path):
    missing = str(tmp_path / "no-such-model")
    message = re.escape(f"model.name {missing!r}: no such folder")
    with pytest.raises(ModelLoadError, match=message):
        load_tokenizer(missing, tmp_path / "cache")
    with pytest.raises(ModelLoadError, match=message):
        load_base_model(missing, tmp_path / "cache", torch.float32)


def test_pickled_weights_load_only_when_the_user_trusts_the_folder(backbones, tmp_path):
    folder = tmp_path / "pickled"
    tok, model = load(backbones["llama"], tmp_path)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):  # what an older checkpoint holds instead
        weights.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match=re.escape(f"{folder}: weights only as pickle files"
                                                       " (pytorch_model.bin)")):
        load_base_model(str(folder), tmp_path / "cache", torch.float32, tok)
    trusted = load_base_model(str(folder), tmp_path / "cache", torch.float32, tok,
                              allow_pickle=True)
    assert torch.equal(trusted.lm_head.weight, model.lm_head.weight)
    cfg = tmp_path / "trusted.yaml"
    cfg.write_text(yaml.safe_dump({"profile": "demo", "model": {
        "name": str(folder), "allow_pickle_weights": True}}))
    assert load_config_file(cfg).model.allow_pickle_weights


def test_a_soft_capped_head_is_refused(backbones, tmp_path):
    """The chunked loss and the scorer compute logits as hidden @ W.T: a model whose head
    soft-caps them would be trained and scored on other logits than its own."""
    folder = tmp_path / "capped"
    tok = family_tokenizer("gemma3")
    config = Gemma3TextConfig(vocab_size=len(tok), head_dim=16, final_logit_softcapping=30.0,
                              **SMALL)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="unsupported LM head.*final_logit_softcapping=30.0"):
        load_base_model(str(folder), tmp_path / "cache", torch.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_placeholder_is_one_token_and_injection_replaces_exactly_it(backbones, family,
                                                                        tmp_path):
    """``[emb]`` is one id with each tokenizer; prompts start with BOS where the family
    prepends one; the injected rows land on the placeholders only, and an injected vector
    goes through the model as a token's embedding row does (Gemma 3 scales both)."""
    tok, model = load(backbones[family], tmp_path)
    rows_before = model.get_input_embeddings().num_embeddings
    ph = add_placeholder_token(tok, model)
    assert tok(f"Heat {PLACEHOLDER}, Fargo", add_special_tokens=False)["input_ids"].count(ph) == 1
    assert model.get_input_embeddings().num_embeddings == max(rows_before, len(tok))
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head.shape == embeddings.shape  # untied Llama: its head grew too
    if family == "llama":  # not a random logit
        torch.testing.assert_close(head[ph], head[:ph].mean(0))

    titles = {1: "Heat (1995)", 2: "Fargo (1996)", 3: "Alien (1979)", 4: "Babe (1995)"}
    ids, slots = encode_prompt(Case(0, [1, 2], [3, 4], 3), titles, tok, ph, hybrid=True)
    assert (ids[0] == tok.bos_token_id) == (family != "qwen2") and ids.count(ph) == len(slots) == 4
    ids = torch.tensor([ids])
    projector = Projector(8, model.config.hidden_size)
    table = torch.randn(5, 8)
    with torch.no_grad():
        embeds = hybrid_embeds(model, projector, table, ids, torch.tensor(slots), ph, True)
        plain = model.get_input_embeddings()(ids)
        scale = float(getattr(model.get_input_embeddings(), "embed_scale", 1.0))
        scaled = math.isclose(scale, model.config.hidden_size ** 0.5, rel_tol=1e-6)
        assert scaled == (family == "gemma3")
        at = ids[0] == ph
        torch.testing.assert_close(embeds[0, ~at], plain[0, ~at])
        torch.testing.assert_close(embeds[0, at], scale * projector(table[slots]))
        # a token's own embedding row, injected, is that token
        token = int(ids[0, 2])
        row = torch.nn.Linear(8, model.config.hidden_size)
        row.weight.zero_(), row.bias.copy_(embeddings[token])
        as_token = hybrid_embeds(model, row, table, ids, torch.tensor(slots), ph, True)
        torch.testing.assert_close(as_token[0, at], plain[0, 2].expand(4, -1))


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_resolve_on_each_architecture(backbones, family, tmp_path):
    """The default (LLaRA's) targets exist in all three; a name the model lacks is an error
    naming it and the model's linear layers."""
    _, model = load(backbones[family], tmp_path)
    with pytest.raises(ValueError, match=rf"\['c_attn'\]: not linear layers of this {family}\w*"
                                         r" model; its linear layers are \[.*'q_proj'"):
        resolve_target_modules(model, ["q_proj", "c_attn"])
    peft_model = apply_lora(model, LoraSettings())
    adapted = {n.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1]
               for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert adapted == set(LoraSettings().target_modules)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_cpt_blocks_keep_documents_apart(backbones, family, tmp_path):
    """CPT packs documents into blocks and restarts ``position_ids`` at each: every family's
    attention (Gemma 3's sliding windows too) must read that as separate documents."""
    import numpy as np

    from cprec_core.training.packing import pack_documents

    tok, model = load(backbones[family], tmp_path)
    a, b = np.arange(5, 42), np.arange(50, 80)
    packed = pack_documents([a, b], block_size=80, pad_id=tok.eos_token_id)
    with torch.no_grad():
        together = model(input_ids=torch.from_numpy(packed.input_ids),
                         position_ids=torch.from_numpy(packed.position_ids),
                         use_cache=False).logits[0]
        alone = model(input_ids=torch.from_numpy(b)[None], use_cache=False).logits[0]
    start = int(np.flatnonzero(packed.input_ids[0] == 50)[0])
    torch.testing.assert_close(together[start:start + len(b)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_answers_equal_uncached_decoding(family):
    """Answers decoded from the tree forward's cache (one batch, and jobs of several
    batches stacked) equal a full forward per token, also where the prompts outrun
    Gemma 3's window: the scorer keeps every cached column and masks by position."""
    from cprec_core.config import CorpusConfig
    from cprec_core.evaluation.llm import LLMScorer

    titles = {i: f"Film number {i} of {1990 + i}" for i in range(1, 9)}
    tok = family_tokenizer(family)
    base = family_model(family, tok)
    ph = add_placeholder_token(tok, base)
    model = apply_lora(base, LoraSettings(dropout=0.0)).eval()
    torch.manual_seed(1)
    for name, p in model.named_parameters():  # an adapter that matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    projector, table = Projector(16, base.config.hidden_size).eval(), torch.randn(10, 16)
    scorer = LLMScorer(model, tok, projector, table, {i: i for i in titles}, ph, torch.float32,
                       CorpusConfig())
    scorer._ends_line = lambda token: False  # answers run to the cap: more steps compared
    cases = [Case(0, [1, 2, 3], [4, 5, 6, 7, 8], 6), Case(1, [2], [5, 4, 8, 7, 6], 7)]

    def reference(case: Case) -> str:
        ids, slots = encode_prompt(case, titles, tok, ph, hybrid=True)
        generated = []
        for _ in range(6):
            with torch.no_grad():
                embeds = hybrid_embeds(model.get_base_model(), projector, table,
                                       torch.tensor([ids + generated]), torch.tensor(slots), ph,
                                       True)
                token = int(model(inputs_embeds=embeds, use_cache=False).logits[0, -1].argmax())
            if token == tok.eos_token_id:
                break
            generated.append(token)
        return tok.decode(generated, skip_special_tokens=True).lstrip(" ").split("\n", 1)[0]

    expected = [reference(c) for c in cases]
    if family == "gemma3":
        assert len(encode_prompt(cases[1], titles, tok, ph, True)[0]) > 2 * GEMMA_WINDOW
    scored = scorer.score(cases, titles, generate=True, max_new_tokens=6)
    assert [r.answer for r in scored] == expected
    stacked = scorer.evaluate(cases, titles, batch_size=1, generate=True, max_new_tokens=6)
    assert [r.answer for r in stacked] == expected


# -- CPT, SFT and scoring, end to end -----------------------------------------------------


@pytest.fixture
def profile_for(tmp_path, fixture_config, backbones):
    """The fixture profile with ``model.name`` a backbone's folder, its corpus, the Crime
    domain's users and candidates and a SASRec built; every run cut to a few steps."""
    from cprec_core.data.build import main as build_corpus
    from cprec_core.data.domain_users import build_domain_users, load_domain_data
    from cprec_core.evaluation.candidates import build_candidate_sets
    from cprec_core.training.next_item import train_next_item

    def make(family: str):
        config = yaml.safe_load(fixture_config.read_text())
        config["model"] = {"name": str(backbones[family])}
        config["cpt"].update(max_tokens=1500, checkpoint_every=100)
        config["sft"].update(max_samples=8, validation_cases=3, checkpoint_every=100,
                             rank={"max_samples": 8, "epochs": 1, "select_every": 0})
        path = tmp_path / f"{family}.yaml"
        path.write_text(yaml.safe_dump(config))
        data = tmp_path / "data"
        assert build_corpus(["--config", str(path), "--data-dir", str(data)]) == 0
        profile = dataclasses.replace(load_config_file(path), data_dir=str(data))
        with duckdb.connect(str(profile.layout.database)) as con:
            build_domain_users(con, "crime")
            build_candidate_sets(con, "crime", negatives=2)
            domain = load_domain_data(con, "crime")
            titles = dict(con.execute("SELECT item_idx, title FROM items").fetchall())
        train_next_item(domain, SASRecConfig(max_epochs=1, max_len=10),
                        profile.layout.next_item_model("sasrec", "crime"), log=lambda *_: None)
        return profile, titles

    return make


def finite_losses(log: Path) -> list[dict]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows), rows
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_cpt_sft_and_scoring_run_on_each_architecture(profile_for, family):
    """CPT (BOS-led documents where the family uses BOS), the paper's SFT recipe and the
    candidate-aware one, then the scorer's one tree forward per batch agreeing with a
    plain forward of the model on each candidate (Gemma 3's prompts outrun its window)."""
    from cprec_core.evaluation.llm import LLMScorer
    from cprec_core.training.cpt import run as run_cpt
    from cprec_core.training.cpt_plan import read_corpus
    from cprec_core.training.sft import run as run_sft

    profile, titles = profile_for(family)
    tok = AutoTokenizer.from_pretrained(profile.layout.tokenizer_dir)
    corpus = read_corpus(profile.layout.corpus_parquet)
    uses_bos = family != "qwen2"
    assert all((int(x[0]) == tok.bos_token_id) == uses_bos and int(x[-1]) == tok.eos_token_id
               for x in corpus.input_ids)
    assert run_cpt(profile, "wsa")["finished"]
    finite_losses(profile.layout.cpt_adapter("wsa").train_log)
    prompts = []
    for system in ("llara", "cprec_rank"):
        assert run_sft(profile, "crime", system)["finished"]
        prompts += [r["prompt"] for r in
                    finite_losses(profile.layout.sft_run(system, "crime", 0).train_log)]
    assert "hybrid" in prompts  # the curriculum's injected steps ran too

    scorer = LLMScorer.load(profile, "crime", "llara")
    items = sorted(scorer.local)
    cases = [Case(0, items[:4], items[4:7], items[5]), Case(1, items[1:3], items[5:8], items[7])]
    results = scorer.score(cases, titles)
    model = scorer.model
    embed = model.get_input_embeddings()
    for case, result in zip(cases, results):
        ids, prompt = scorer.prompt(case, titles)
        assert (int(ids[0, 0]) == tok.bos_token_id) == uses_bos
        if family == "gemma3":
            assert ids.shape[1] > GEMMA_WINDOW
        for k, cont in enumerate(scorer.continuations(case, titles)):
            with torch.no_grad():
                inputs = torch.cat([prompt, embed(torch.tensor([cont[:-1]]))], 1)
                logits = model(inputs_embeds=inputs, use_cache=False).logits[0].float()
            lp = torch.log_softmax(logits[ids.shape[1] - 1:], -1)
            expected = lp.gather(1, torch.tensor(cont)[:, None]).sum().item()
            assert math.isfinite(expected)
            assert abs(result.summed[k] - expected) < 1e-3, (family, k, result.summed[k], expected)
