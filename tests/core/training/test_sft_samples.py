import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cprec_core.models.hybrid import Projector, add_placeholder_token, hybrid_embeds, inject
from cprec_core.models.loader import TINY
from cprec_core.models.tokenizer import train_tiny_tokenizer
from cprec_core.prompts import PLACEHOLDER, encode_sft_example, render_llara
from cprec_core.training.sft_samples import build_samples, choose_hybrid, hybrid_probability

ITEMS = list(range(100, 130))
TITLES = {i: f"Movie {i} ({1990 + i % 10})" for i in ITEMS}


def samples():
    histories = [[100, 101, 102, 103, 104, 105], [110, 111, 112], [120, 121]]
    return build_samples(histories, ITEMS, history=4, min_history=3, seed=1), histories


def test_sliding_windows_and_candidates():
    out, histories = samples()
    # user 0: targets at t = 3, 4, 5; user 1 has only 3 items: no target after 3; user 2 too short
    assert [(s.user, s.target) for s in out] == [(0, 103), (0, 104), (0, 105)]
    assert out[0].history == [100, 101, 102] and out[2].history == [101, 102, 103, 104]
    # a classic model reads the whole history before the target, the prompt its window
    assert out[2].classic_history == [100, 101, 102, 103, 104]
    for s in out:
        assert len(s.candidates) == 20 == len(set(s.candidates))
        assert s.candidates.count(s.target) == 1
        assert not (set(s.candidates) - {s.target}) & {*s.history, s.target}  # outside the window
    again, _ = samples()
    assert again == out  # fixed seed
    assert len({s.candidates.index(s.target) for s in out}) > 1  # target position varies
    with pytest.raises(ValueError, match="at least"):
        build_samples([[1, 2, 3, 4]], [1, 2, 3, 4, 5])


def test_negatives_are_not_conditioned_on_held_out_items():
    """The user's own validation/test item (106, 107: after the train history) is drawn as a
    negative like any other item outside the window: excluding it would single it out."""
    histories = [[100, 101, 102, 103]]
    drawn = [s for seed in range(20) for s in build_samples(histories, ITEMS, history=3,
                                                            min_history=3, seed=seed)]
    negatives = {i for s in drawn for i in s.candidates if i != s.target}
    assert {106, 107} <= negatives
    assert not negatives & {100, 101, 102, 103}  # the window and its target never are
    # an item older than the window is outside it and may be a negative, as LLaRA draws
    older = {i for seed in range(20)
             for s in build_samples([[100, 101, 102, 103]], ITEMS, history=1, min_history=3,
                                    seed=seed)
             for i in s.candidates if i != s.target}
    assert 100 in older and 102 not in older  # 102 is the window, 100 came before it


def test_prompts_hybrid_and_text():
    s = samples()[0][0]
    text, slots = render_llara(s, TITLES, hybrid=True)
    assert text.startswith("This user has watched Movie 100 (1990) [emb], Movie 101")
    assert text.count(PLACEHOLDER) == len(slots) == len(s.history) + 20
    assert text.endswith("recommend one movie for this user to watch next. The movie title is")
    text, slots = render_llara(s, TITLES, hybrid=False)
    assert PLACEHOLDER not in text and slots == []


def tiny():
    tok = train_tiny_tokenizer([render_llara(s, TITLES, True)[0] for s in samples()[0]] * 3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **TINY))
    return tok, model, add_placeholder_token(tok, model)


def test_tokenize_labels_only_the_answer():
    tok, model, ph = tiny()
    assert model.get_input_embeddings().num_embeddings == len(tok) and ph == len(tok) - 1
    s = samples()[0][0]
    row = encode_sft_example(s, TITLES, tok, ph, hybrid=True)
    answer = [t for t in row["labels"] if t != -100]
    assert tok.decode(answer[:-1]).strip() == TITLES[s.target] and answer[-1] == tok.eos_token_id
    assert row["input_ids"][-len(answer):] == answer
    assert row["input_ids"].count(ph) == len(row["slot_items"])
    assert encode_sft_example(s, TITLES, tok, ph, hybrid=False)["slot_items"] == []


def test_injected_rows_equal_projected_embeddings_and_others_are_untouched():
    tok, model, ph = tiny()
    s = samples()[0][0]
    row = encode_sft_example(s, TITLES, tok, ph, hybrid=True)
    ids = torch.tensor([row["input_ids"]])
    item_table = torch.randn(200, 64)
    projector = Projector(64, model.config.hidden_size)
    slots = torch.tensor(row["slot_items"])
    embeds = hybrid_embeds(model, projector, item_table, ids, slots, ph, hybrid=True)
    plain = model.get_input_embeddings()(ids)
    mask = ids == ph
    torch.testing.assert_close(embeds[mask], projector(item_table[slots]))
    torch.testing.assert_close(embeds[~mask], plain[~mask])
    # gradients reach the projector through the injected rows only
    embeds.sum().backward()
    assert projector.net[0].weight.grad is not None
    with pytest.raises(ValueError, match="placeholders"):
        inject(plain, ids, ph, torch.zeros(3, model.config.hidden_size))
    # the model generates from inputs_embeds
    out = model.generate(inputs_embeds=embeds.detach(), attention_mask=torch.ones_like(ids),
                         max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[-1] <= 3


def test_curriculum_probability():
    assert hybrid_probability(0, 100) == 0 and hybrid_probability(100, 100) == 1
    rng = np.random.default_rng(0)
    early = np.mean([choose_hybrid(10, 100, rng) for _ in range(4000)])
    late = np.mean([choose_hybrid(90, 100, rng) for _ in range(4000)])
    assert abs(early - 0.1) < 0.02 and abs(late - 0.9) < 0.02
