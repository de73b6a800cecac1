"""The candidate-aware objective: one tree forward gives the same candidate log-likelihoods,
loss and gradients as a separate forward per candidate; the validation report's metrics."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cprec_core.config import LoraSettings
from cprec_core.models.candidate_tree import TREE_ATTENTION
from cprec_core.models.hybrid import (HybridLM, Projector, add_placeholder_token, collab_inputs,
                                      hybrid_embeds, injection_diagnostics)
from cprec_core.models.loader import TINY
from cprec_core.models.lora import apply_lora
from cprec_core.models.tokenizer import train_tiny_tokenizer
from cprec_core.prompts import Case, encode_answer, encode_prompt, render_llara
from cprec_core.training.rank_loss import RankBatch, candidate_loss, rank_batch, validation_report

ITEMS = list(range(1, 31))
TITLES = {i: f"Film {i} of {1960 + i}" + (" part two" * (i % 3)) for i in ITEMS}
CASES = [Case(0, [1, 2, 3], list(range(4, 24)), 9),
         Case(1, [25], [30, *range(5, 24), ], 17)]  # a shorter prompt: the batch is padded


def hybrid_model(listing: bool):
    tok = train_tiny_tokenizer([render_llara(c, TITLES, True, listing)[0] for c in CASES] * 4
                               + [TITLES[i] for i in ITEMS])
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **TINY))
    ph = add_placeholder_token(tok, base)
    model = apply_lora(base, LoraSettings(dropout=0.0))
    for name, p in model.named_parameters():  # non-zero LoRA B so its gradient flows on
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    base.set_attn_implementation(TREE_ATTENTION)
    table = collab_inputs(torch.randn(len(ITEMS) + 1, 8) * 0.1, standardise=True)
    return HybridLM(model, Projector(8, base.config.hidden_size), table, ph), tok, ph


def reference_scores(lm: HybridLM, tok, ph, listing: bool,
                     candidate_vectors: bool = False) -> torch.Tensor:
    """A separate full forward (plain causal attention) per case and candidate; with
    ``candidate_vectors`` the candidate's injected vector sits between prompt and answer."""
    base = lm.model.get_base_model()
    rows = []
    for case in CASES:
        ids, slots = encode_prompt(case, TITLES, tok, ph, True, listing)
        scores = []
        for c in case.candidates:
            answer = encode_answer(TITLES[c], tok)
            x = torch.tensor([ids + answer])
            embeds = hybrid_embeds(base, lm.projector, lm.item_table, x, torch.tensor(slots),
                                   ph, hybrid=True)
            start = len(ids) - 1  # the column that predicts the answer's first token
            if candidate_vectors:
                vector = lm.projector(lm.item_table[torch.tensor([c])])[None]
                embeds = torch.cat([embeds[:, :len(ids)], vector, embeds[:, len(ids):]], 1)
                start = len(ids)
            logits = base(inputs_embeds=embeds, use_cache=False).logits[0].float()
            lp = torch.log_softmax(logits[start:-1], -1)
            scores.append(lp.gather(1, torch.tensor(answer)[:, None]).sum())
        rows.append(torch.stack(scores))
    return torch.stack(rows)


def grads(lm: HybridLM) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    lm.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("listing,candidate_vectors", [(True, False), (False, False),
                                                       (False, True)])
def test_tree_loss_and_gradients_equal_separate_forwards(listing, candidate_vectors):
    lm, tok, ph = hybrid_model(listing)
    batch = rank_batch(CASES, TITLES, tok, ph, {i: i for i in ITEMS}, True, listing, "cpu",
                       candidate_vectors=candidate_vectors)
    assert batch.answer_tokens.shape == (2, 20)
    tree = lm(candidates=batch.inputs, hybrid=True)
    loss = candidate_loss(tree, batch, ntp_weight=0.5)
    loss.total.backward()
    tree_grads = grads(lm)
    reference = reference_scores(lm, tok, ph, listing, candidate_vectors)
    expected = candidate_loss(reference, batch, ntp_weight=0.5)
    expected.total.backward()
    reference_grads = grads(lm)
    torch.testing.assert_close(tree.detach(), reference.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss.total.detach(), expected.total.detach(), atol=1e-4, rtol=1e-4)
    assert set(tree_grads) == set(reference_grads)
    assert any("projector" in n for n in tree_grads) and any("lora_A" in n for n in tree_grads)
    for name, g in reference_grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(tree_grads[name], g, atol=1e-5, rtol=1e-3, msg=name)


def test_candidate_loss_is_cross_entropy_plus_weighted_target_nll():
    scores = torch.tensor([[-3.0, -1.0, -2.0]])
    lm_batch = type("B", (), {"target_index": torch.tensor([2]),
                              "answer_tokens": torch.tensor([[2.0, 2.0, 4.0]])})
    loss = candidate_loss(scores, lm_batch, ntp_weight=0.25)
    ce = -torch.log_softmax(scores, -1)[0, 2]
    assert torch.isclose(loss.ranking, ce) and torch.isclose(loss.ntp, torch.tensor(0.5))
    assert torch.isclose(loss.total, ce + 0.25 * 0.5)


def test_validation_report_counts_ties_as_misses_and_picks_the_better_scoring():
    summed = np.array([[-2.0, -4.0, -9.0], [-6.0, -3.0, -3.0]])
    tokens = np.array([[1.0, 4.0, 9.0], [3.0, 1.0, 1.0]])
    report = validation_report(summed, tokens, np.array([1, 1]))
    # sum: case 0 misses (-2 beats -4), case 1 ties (-3, -3) = miss
    # mean: case 0 -2, -1, -1 ties = miss; case 1 -2, -3, -3 = miss
    assert report["hr@1 (sum)"] == 0.0 and report["hr@1 (mean)"] == 0.0
    report = validation_report(summed, tokens, np.array([0, 0]))
    assert report["hr@1 (sum)"] == 0.5 and report["hr@1 (mean)"] == 0.5
    assert report["scoring"] == "mean"  # level (MRR 0.75 both): the evaluation's default
    assert report["loss per answer"] > 0 and len(report["per_case"]["loss"]) == 2
    # the sum ranks the target first on 50 cases, the mean last: the sum, beyond noise
    summed, tokens = np.tile([[-1.0, -2.0]], (50, 1)), np.tile([[1.0, 10.0]], (50, 1))
    report = validation_report(summed, tokens, np.zeros(50, int))
    assert (report["mrr (sum)"], report["mrr (mean)"], report["scoring"]) == (1.0, 0.5, "sum")


def test_standardised_inputs_make_injected_vectors_item_specific():
    torch.manual_seed(0)
    raw = torch.randn(200, 8) * 0.05 + 0.3  # small vectors sharing a large common part
    raw[0] = 0
    projector = Projector(8, 32)
    token_rows = torch.randn(50, 32)
    before = injection_diagnostics(projector, collab_inputs(raw, False), token_rows)
    after = injection_diagnostics(projector, collab_inputs(raw, True), token_rows)
    assert after["item_specific_share"] > 2 * before["item_specific_share"]
    assert after["mean_pairwise_cosine"] < before["mean_pairwise_cosine"]
    assert before["items"] == 199


def test_the_learned_temperature_calibrates_the_loss_and_old_projectors_load():
    summed = np.array([[-10.0, -40.0, -60.0], [-50.0, -20.0, -30.0]])  # tens of nats apart
    tokens = np.ones_like(summed)
    target = np.array([0, 2])  # one confident hit, one confident miss
    raw = validation_report(summed, tokens, target)
    calibrated = validation_report(summed, tokens, target, summed / 20.0)
    assert raw["temperature"] == 1.0 and calibrated["temperature"] == 20.0
    assert calibrated["loss per answer"] < raw["loss per answer"] == raw["loss per answer (T=1)"]
    assert calibrated["mrr (sum)"] == raw["mrr (sum)"]  # the ranking does not change
    # the training loss reads the calibrated scores
    batch = RankBatch(None, torch.tensor(target), torch.ones(2, 3))
    scores = torch.tensor(summed)
    hot = candidate_loss(scores, batch, 0.0)
    soft = candidate_loss(scores, batch, 0.0, scores / 20.0)
    assert soft.ranking < hot.ranking and torch.isclose(soft.ntp, hot.ntp)
    # a projector saved before the temperature existed loads with temperature 1
    old = {k: v for k, v in Projector(4, 8).state_dict().items() if k != "log_temperature"}
    projector = Projector(4, 8)
    projector.log_temperature.data.fill_(3.0)
    projector.load_state_dict(old)
    assert float(projector.log_temperature) == 0.0
