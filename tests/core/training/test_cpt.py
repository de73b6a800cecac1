"""CPT on the tiny model: the plan (phases and the data switch), packing that keeps
documents apart, training logs, and kill-and-resume giving the same adapter."""

import dataclasses
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cprec_core.config import load_config_file
from cprec_core.data.build import main as build_corpus
from cprec_core.models.causal_lm import chunked_cross_entropy_sum
from cprec_core.models.loader import load_base_model
from cprec_core.training.cpt import CPTError, CPTTrainer, run
from cprec_core.training.cpt_plan import CorpusError, Corpus, build_plan, read_corpus, shuffled_control
from cprec_core.training.packing import IGNORE, assign_blocks, pack_documents

@pytest.fixture
def profile(tmp_path, fixture_config):
    """The fixture profile (small CPT config) with its corpus snapshot built."""
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]) == 0
    return dataclasses.replace(load_config_file(fixture_config), data_dir=str(tmp_path / "data"))


def test_packing_keeps_documents_whole_and_targets_aligned():
    docs = [np.arange(1, n + 1) for n in (5, 3, 7, 2, 9, 4)]
    packed = pack_documents(docs, block_size=10, pad_id=0)
    assert packed.tokens.sum() == 30 and len(packed) == 4  # 30 tokens need >= 3 blocks
    for b in range(len(packed)):
        ids, pos, tgt = packed.input_ids[b], packed.position_ids[b], packed.targets[b]
        starts = np.flatnonzero(pos == 0)
        for s, e in zip(starts, list(starts[1:]) + [10]):
            doc = ids[s:e]
            if tgt[s] == IGNORE and pos[s:e].max() == e - s - 1 and (doc == 0).all():
                continue  # padding tail
            assert list(doc) == list(range(1, e - s + 1))  # a whole document
            assert list(tgt[s:e - 1]) == list(doc[1:]) and tgt[e - 1] == IGNORE
    assert sorted(len(b) for b in assign_blocks([6, 5, 4, 3, 2], 10)) == [2, 3]


def test_packed_attention_does_not_cross_documents(profile):
    tok_dir = profile.layout.tokenizer_dir
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = load_base_model("tiny-random", profile.layout.cache_dir, torch.float32, tok).eval()
    a, b = np.arange(3, 40), np.arange(50, 70)
    packed = pack_documents([a, b], block_size=64, pad_id=tok.eos_token_id)
    with torch.no_grad():
        together = model(input_ids=torch.from_numpy(packed.input_ids),
                         position_ids=torch.from_numpy(packed.position_ids),
                         use_cache=False).logits[0]  # with a cache, transformers skips it
        alone = model(input_ids=torch.from_numpy(b)[None], use_cache=False).logits[0]
    start = int(np.flatnonzero(packed.input_ids[0] == 50)[0])
    torch.testing.assert_close(together[start:start + len(b)], alone, atol=1e-5, rtol=1e-5)


def test_chunked_cross_entropy_matches_torch():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    ours = chunked_cross_entropy_sum(hidden, weight, targets, chunk=8)
    ours.backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(gh, hidden.grad)
    torch.testing.assert_close(gw, weight.grad)


def test_wsa_plan_switches_data_at_the_annealing_boundary(profile):
    corpus = read_corpus(profile.layout.corpus_parquet)
    plan = build_plan(corpus, profile.cpt, "wsa", pad_id=0)
    phases = [plan.phase(s) for s in range(plan.total_steps)]
    assert phases[0] == "warmup" and phases[-1] == "anneal" and "stable" in phases
    first_anneal = phases.index("anneal")
    assert set(plan.data[:first_anneal]) == {"domain"} and set(plan.data[first_anneal:]) == {"mixed"}
    assert plan.warmup_steps == max(1, round(0.05 * plan.total_steps))
    # every block read exactly once: one epoch, every mixed sequence seen in annealing
    seen = np.concatenate(plan.steps)
    assert sorted(seen) == list(range(len(plan.blocks)))
    mixed_tokens = sum(len(x) for x, k in zip(corpus.input_ids, corpus.kinds) if k == "mixed")
    assert sum(plan.tokens(s) for s in range(first_anneal, plan.total_steps)) == mixed_tokens


def test_other_variants_plan(profile):
    corpus = read_corpus(profile.layout.corpus_parquet)
    ds = build_plan(corpus, profile.cpt, "ds_only", pad_id=0)
    assert set(ds.data) == {"domain"} and ds.anneal_steps > 0
    mix = build_plan(corpus, profile.cpt, "ds_mix_shuffled", pad_id=0)
    assert mix.stable_steps == 0 and set(mix.data) == {"domain+mixed"}
    assert mix.blocks.tokens.sum() == corpus.tokens
    only_domain = Corpus(["domain"], [["A"]], [[1, 2]], [np.arange(5)], "x")
    with pytest.raises(CorpusError, match="no mixed sequences"):
        build_plan(only_domain, profile.cpt, "wsa", pad_id=0)


def test_a_single_domain_corpus_anneals_on_its_own_documents(profile):
    """The public benchmark's corpus is one target domain's train split: wsa_target with
    anneal_ratio keeps WSA's LR shape over it (no data switch: there is no mixed kind);
    without anneal_ratio it is the clear no-mixed-sequences error."""
    docs = [np.arange(1, 40 + i) for i in range(40)]
    single = Corpus(["target"] * 40, [["ML-1M"]] * 40, [[1, 2]] * 40, docs, "single")
    cfg = dataclasses.replace(profile.cpt, anneal_ratio=0.25, blocks_per_step=2, micro_batch=1,
                              block_size=64)
    plan = build_plan(single, cfg, "wsa_target", pad_id=0)
    phases = [plan.phase(s) for s in range(plan.total_steps)]
    assert phases[0] == "warmup" and "stable" in phases and phases[-1] == "anneal"
    assert plan.anneal_steps == round(0.25 * plan.total_steps) and set(plan.data) == {"domain"}
    assert sorted(np.concatenate(plan.steps)) == list(range(len(plan.blocks)))  # one epoch
    with pytest.raises(CorpusError, match="no mixed sequences"):
        build_plan(single, dataclasses.replace(cfg, anneal_ratio=0.0), "wsa_target", pad_id=0)


def test_control_arm_shuffles_items_across_users_keeping_format(profile):
    from transformers import AutoTokenizer
    import pyarrow.parquet as pq

    corpus = read_corpus(profile.layout.corpus_parquet)
    items = pq.read_table(profile.layout.corpus_items).to_pydict()
    titles = dict(zip(items["item_idx"], items["title"]))
    tok = AutoTokenizer.from_pretrained(profile.layout.tokenizer_dir)
    control = shuffled_control(corpus, titles, profile.corpus, tok, seed=0)
    assert [len(x) for x in control.item_idxs] == [len(x) for x in corpus.item_idxs]
    for kind in ("domain", "mixed"):
        before = Counter(i for x, k in zip(corpus.item_idxs, corpus.kinds) if k == kind for i in x)
        after = Counter(i for x, k in zip(control.item_idxs, control.kinds) if k == kind for i in x)
        assert before == after  # same items, same counts
    changed = sum(a != b for a, b in zip(corpus.item_idxs, control.item_idxs))
    assert changed > 0.9 * len(corpus)
    domain_of = dict(zip(items["item_idx"], items["domain"]))
    for x, k, d in zip(control.item_idxs, control.kinds, control.domains):
        if k == "domain":
            assert {domain_of[i] for i in x} == set(d)  # still one domain per sequence
    text = tok.decode(control.input_ids[0][:-1])
    assert text.startswith("This user has bought ") and "Please predict the next item" in text


def test_training_logs_three_phases_and_writes_the_adapter(profile):
    result = run(profile, "wsa")
    out = profile.layout.cpt_adapter("wsa").path
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert result["finished"] and len(rows) == result["steps"]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert {r["phase"] for r in rows} == {"warmup", "stable", "anneal"}
    switch = next(i for i, r in enumerate(rows) if r["data"] == "mixed")
    assert rows[switch]["phase"] == "anneal" and rows[switch - 1]["phase"] == "stable"
    assert all(r["data"] == "mixed" for r in rows[switch:])
    assert max(r["lr"] for r in rows) == pytest.approx(profile.cpt.lr)
    assert rows[-1]["lr"] < rows[switch]["lr"]  # cosine annealing
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
    assert set(rows[0]) == {"step", "phase", "data", "lr", "loss", "tokens", "seconds"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"] == "tiny-random" and manifest["final_loss"] == rows[-1]["loss"]
    assert manifest["tokens"] == sum(r["tokens"] for r in rows)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_killed_run_resumes_to_the_same_adapter(profile, tmp_path):
    straight = run(profile, "wsa")
    reference = load_file(profile.layout.cpt_adapter("wsa").adapter_weights)
    reference_log = (profile.layout.cpt_adapter("wsa").train_log).read_text()

    other = dataclasses.replace(profile, name="resumed")
    import shutil
    shutil.copytree(profile.layout.corpus_dir, other.layout.corpus_dir)
    partial = run(other, "wsa", stop_after=5)  # "killed" after step 5; last checkpoint: 3
    assert not partial["finished"]
    assert [p.name for p in sorted((other.layout.cpt_adapter("wsa").checkpoints).glob("step-*"))] == [
        "step-000003"]
    resumed = run(other, "wsa")
    assert resumed["finished"] and resumed["steps_run"] == straight["steps"] - 3
    adapter = load_file(other.layout.cpt_adapter("wsa").adapter_weights)
    assert adapter.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(adapter[key], reference[key], atol=0, rtol=0)
    assert (other.layout.cpt_adapter("wsa").train_log).read_text().count("\n") == straight["steps"]
    assert json.loads((other.layout.cpt_adapter("wsa").train_log).read_text().splitlines()[-1])[
        "loss"] == json.loads(reference_log.splitlines()[-1])["loss"]


def test_changed_plan_discards_old_checkpoints(profile):
    run(profile, "wsa", stop_after=4)
    changed = dataclasses.replace(profile, cpt=dataclasses.replace(profile.cpt, lr=5e-4))
    result = run(changed, "wsa")
    assert result["finished"] and result["steps_run"] == result["steps"]


def test_clear_errors_for_missing_corpus_and_memory(profile, monkeypatch):
    import shutil

    shutil.rmtree(profile.layout.corpus_dir)
    with pytest.raises(CPTError, match="materialise cpt_corpus first"):
        CPTTrainer(profile, "wsa").setup()


def test_memory_estimate_refuses_an_obvious_misfit(profile, monkeypatch):
    monkeypatch.setattr("cprec_core.training.cpt.available_memory", lambda device: 1 << 20)
    with pytest.raises(CPTError, match="GiB but .* GiB is available.*gradient_checkpointing"):
        CPTTrainer(profile, "wsa").setup()


def test_a_finished_run_of_the_same_plan_is_reused_from_another_profile(profile):
    trained = run(profile, "wsa")
    other = dataclasses.replace(profile, name="other",
                                cpt=dataclasses.replace(profile.cpt, reuse_from=(profile.name,),
                                                        variants=("wsa", "ds_only")))
    shutil.copytree(profile.layout.corpus_dir, other.layout.corpus_dir)
    reused = run(other, "wsa")
    assert reused["finished"] and reused["reused_from"] == str(profile.layout.cpt_adapter("wsa").path)
    assert reused["plan_fingerprint"] == trained["plan_fingerprint"]  # variants left out
    mine, theirs = other.layout.cpt_adapter("wsa"), profile.layout.cpt_adapter("wsa")
    assert mine.adapter_weights.read_bytes() == theirs.adapter_weights.read_bytes()
    assert json.loads(mine.manifest.read_text())["profile"] == "other"
    assert not mine.checkpoints.exists()  # nothing was trained
    # another plan (here another learning rate) is trained, not reused
    changed = dataclasses.replace(other, cpt=dataclasses.replace(other.cpt, lr=5e-4))
    again = run(changed, "wsa", restart=True)
    assert "reused_from" not in again and again["plan_fingerprint"] != trained["plan_fingerprint"]
