"""LLM scoring: the tree-masked single forward equals a full forward per candidate, greedy
decoding from the cut cache equals uncached decoding, answer parsing, zero-shot prompt."""

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cprec_core.config import CorpusConfig, LoraSettings
from cprec_core.evaluation.llm import LLMScorer, _fp32_matmul_in_bf16, greedy_walk
from cprec_core.models.hybrid import Projector, add_placeholder_token, hybrid_embeds
from cprec_core.models.loader import TINY
from cprec_core.models.lora import apply_lora
from cprec_core.models.tokenizer import train_tiny_tokenizer
from cprec_core.prompts import Case, parse_answer, render_llara, render_zero_shot
from naive_scorer import score_naive

ITEMS = list(range(1, 9))
TITLES = {i: f"Film number {i} of {1990 + i}" for i in ITEMS}


def scorer():
    sample = Case(0, [1, 2, 3], [4, 5, 6, 7, 8], 6)
    tok = train_tiny_tokenizer([render_llara(sample, TITLES, True)[0]] * 4)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **TINY))
    ph = add_placeholder_token(tok, base)
    model = apply_lora(base, LoraSettings(dropout=0.0)).eval()
    for name, p in model.named_parameters():  # non-zero LoRA so the adapter matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    projector = Projector(16, base.config.hidden_size).eval()
    table = torch.randn(10, 16)
    return LLMScorer(model, tok, projector, table, {i: i for i in ITEMS}, ph, torch.float32), sample


def full_forward_logprob(s, prompt_ids, slots, cont):
    ids = torch.tensor([prompt_ids + cont])
    with torch.no_grad():
        embeds = hybrid_embeds(s.model.get_base_model(), s.projector, s.item_table, ids,
                               torch.tensor(slots), s.placeholder_id, hybrid=True)
        logits = s.model(inputs_embeds=embeds, use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt_ids) - 1:-1], -1)
    return lp.gather(1, torch.tensor(cont)[:, None]).sum().item()


def two_cases(sample):
    """The fixture case and a shorter one, so the batch needs padding."""
    return [sample, Case(1, [2], [5, 4, 8, 7, 6], 7)]


def test_tree_masked_batch_scores_equal_full_forwards():
    s, sample = scorer()
    cases = two_cases(sample)
    results = s.score(cases, TITLES)
    assert [r.answer for r in results] == [None, None]
    for case, result in zip(cases, results):
        naive = score_naive(s, case, TITLES)
        prompt, slots = render_llara(case, TITLES, hybrid=True)
        prompt_ids = s.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for k, c in enumerate(case.candidates):
            cont = (s.tokenizer(" " + TITLES[c], add_special_tokens=False)["input_ids"]
                    + [s.tokenizer.eos_token_id])
            expected = full_forward_logprob(s, prompt_ids, slots, cont)
            assert abs(result.summed[k] - expected) < 1e-3, (k, result.summed[k], expected)
            assert abs(result.mean[k] - expected / len(cont)) < 1e-3
            assert abs(naive.summed[k] - expected) < 1e-3


def greedy_reference(s, case, steps):
    """A full forward per generated token, no cache, no padding."""
    prompt, slots = render_llara(case, TITLES, hybrid=True)
    ids = s.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated = []
    for _ in range(steps):
        with torch.no_grad():
            embeds = hybrid_embeds(s.model.get_base_model(), s.projector, s.item_table,
                                   torch.tensor([ids + generated]), torch.tensor(slots),
                                   s.placeholder_id, hybrid=True)
            token = int(s.model(inputs_embeds=embeds, use_cache=False).logits[0, -1].argmax())
        if token == s.tokenizer.eos_token_id:
            break
        generated.append(token)
    return s.tokenizer.decode(generated, skip_special_tokens=True).lstrip(" ").split("\n", 1)[0]


def test_batched_greedy_answers_equal_uncached_unpadded_decoding():
    s, sample = scorer()
    cases = two_cases(sample)
    answers = [r.answer for r in s.score(cases, TITLES, generate=True, max_new_tokens=6)]
    assert answers == [greedy_reference(s, c, 6) for c in cases]
    assert all(answers)  # the random model does not stop at once: the test compares tokens
    # one case per forward; the two prompt caches (of different widths) decoded together
    decoded_rows = []
    greedy = s._greedy
    s._greedy = lambda cache, first, *args: decoded_rows.append(len(first)) or greedy(cache, first, *args)
    results = s.evaluate(cases, TITLES, batch_size=1, generate=True, max_new_tokens=6)
    assert decoded_rows == [2]
    assert [r.answer for r in results] == answers
    s.decode_rows = 1  # each forward's rows decoded on their own: the same answers
    decoded_rows.clear()
    assert [r.answer for r in s.evaluate(cases, TITLES, 1, True, 6)] == answers
    assert decoded_rows == [1, 1]
    assert [r.chosen for r in results] == [parse_answer(a, c, TITLES) for a, c in zip(answers, cases)]


def test_finished_rows_leave_the_decoding_batch_with_the_same_answers():
    """Rows whose answers end early are dropped from the decoding batch; the others'
    answers are the same as with every row kept to the end."""
    s, sample = scorer()
    cases = [sample, *two_cases(sample)[1:], Case(2, [3, 1], [6, 8, 4, 5, 7], 5),
             Case(3, [7, 2, 4, 1], [8, 6, 5, 3, 2], 3)]
    torch.manual_seed(1)
    for name, p in s.model.named_parameters():  # a larger adapter: answers vary by case
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    s._ends_line = lambda token: token % 7 == 0  # so they end at different steps
    rows_per_step = []
    s.model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows_per_step.append(kwargs["input_ids"].shape[0])
        if kwargs.get("input_ids") is not None else None, with_kwargs=True)
    s.drop_finished = False
    kept = [r.answer for r in s.evaluate(cases, TITLES, batch_size=4, max_new_tokens=10)]
    assert len(set(rows_per_step)) == 1  # every row stepped until the last one ended
    decoded = rows_per_step[0]
    rows_per_step.clear()
    s.drop_finished = True
    dropped = [r.answer for r in s.evaluate(cases, TITLES, batch_size=4, max_new_tokens=10)]
    assert dropped == kept
    assert rows_per_step[0] == decoded and rows_per_step[-1] < decoded
    assert rows_per_step == sorted(rows_per_step, reverse=True)


def teach_answer(s, case, title, steps=100):
    """Overfit the tiny model to answer ``case`` with ``title`` (then EOS)."""
    prompt, slots = render_llara(case, TITLES, hybrid=True)
    ids = s.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = s.tokenizer(" " + title, add_special_tokens=False)["input_ids"] + [s.tokenizer.eos_token_id]
    params = list(s.model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=3e-3)
    for _ in range(steps):
        embeds = hybrid_embeds(s.model.get_base_model(), s.projector, s.item_table,
                               torch.tensor([ids + answer[:-1]]), torch.tensor(slots),
                               s.placeholder_id, hybrid=True)
        logits = s.model(inputs_embeds=embeds, use_cache=False).logits[0, len(ids) - 1:]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(answer))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    s.model.eval()


def test_answers_read_off_the_tree_equal_decoding():
    """A model that answers with a candidate title needs no decoding step for that case:
    the greedy answer is read off the tree forward. Cases whose answer leaves the titles are
    decoded from their rows of the cache, and both equal uncached decoding."""
    s, sample = scorer()
    teach_answer(s, sample, TITLES[6])
    cases = [sample, Case(2, [1], [4, 5, 7, 8, 3], 4)]  # the second lacks the taught title
    decoded_rows = []
    greedy = s._greedy
    s._greedy = lambda cache, first, *args: decoded_rows.append(len(first)) or greedy(cache, first, *args)
    results = s.score(cases, TITLES, generate=True, max_new_tokens=12)
    assert results[0].answer == TITLES[6] and results[0].chosen == 6
    assert decoded_rows == [1]  # only the second case was decoded
    assert (s.answers_read_off, s.answers_decoded) == (1, 1)
    assert [r.answer for r in results] == [greedy_reference(s, c, 12) for c in cases]
    assert results[1].chosen is None  # it names no candidate


def test_greedy_walk_follows_titles_and_stops_like_decoding():
    conts = [[5, 6, 0], [5, 7, 8, 0]]  # two titles sharing their first token; EOS is 0
    newline = lambda t: t == 3  # noqa: E731
    # argmax[k][j]: after candidate k's first j + 1 tokens
    assert greedy_walk(5, conts, [[7, 0], [7, 8, 0]], 0, newline, 8) == [5, 7, 8]
    assert greedy_walk(5, conts, [[6, 0], [6, 8, 0]], 0, newline, 8) == [5, 6]
    assert greedy_walk(5, conts, [[6, 3], [6, 8, 0]], 0, newline, 8) == [5, 6, 3]  # newline kept
    assert greedy_walk(5, conts, [[6, 9], [6, 8, 0]], 0, newline, 8) is None  # leaves the titles
    assert greedy_walk(9, conts, [[6, 0], [6, 8, 0]], 0, newline, 8) is None
    assert greedy_walk(0, conts, [[6, 0], [6, 8, 0]], 0, newline, 8) == []  # EOS at once
    assert greedy_walk(5, conts, [[7, 0], [7, 8, 0]], 0, newline, 2) == [5, 7]  # length cap


def test_head_matmul_in_bf16_compute_is_exact_for_bf16_operands_and_restores_the_setting():
    torch.manual_seed(0)
    hidden = torch.randn(32, 576).bfloat16().float()  # bf16 values, as the LM head sees them
    weight = torch.randn(2048, 576).bfloat16().float()
    before = torch.backends.mkldnn.matmul.fp32_precision
    with _fp32_matmul_in_bf16(True):
        fast = hidden @ weight.T
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    exact = hidden.double() @ weight.double().T
    assert (fast.double() - exact).abs().max() < 1e-3  # fp32 accumulation order only


def test_an_answer_is_valid_only_when_it_names_exactly_one_candidate():
    sample = Case(0, [1], [4, 5, 6], 5)
    titles = {1: "Heat (1995)", 4: "Alien (1979)", 5: "Aliens (1986)", 6: "Fargo (1996)"}
    assert parse_answer(" Aliens (1986)", sample, titles) == 5
    assert parse_answer("Fargo (1996)\nAlien (1979)", sample, titles) == 6  # first line only
    assert parse_answer("Fargo (1996), Alien (1979)", sample, titles) is None
    assert parse_answer("Heat (1995)", sample, titles) is None  # not a candidate
    assert parse_answer("", sample, titles) is None


def test_zero_shot_prompt_lists_candidates_then_the_cpt_template():
    sample = Case(0, [1, 2], [4, 5], 4)
    text = render_zero_shot(sample, TITLES, CorpusConfig())
    assert text.startswith(f"Given the following 2 items: {TITLES[4]}, {TITLES[5]}.")
    assert text.endswith("Please predict the next item this user will buy.")
    assert f"bought {TITLES[1]}, {TITLES[2]} in the previous" in text


def test_evaluate_batches_by_length_and_returns_the_given_order():
    s, sample = scorer()
    cases = [Case(1, [2], [5, 4, 8, 7, 6], 7), sample, Case(2, [3], [8, 7, 6, 5, 4], 4),
             Case(3, [1, 2, 3, 4], [6, 5, 4, 8, 7], 8)]
    one_by_one = [s.score([c], TITLES, generate=True, max_new_tokens=4)[0] for c in cases]
    batched = s.evaluate(cases, TITLES, batch_size=3, generate=True, max_new_tokens=4)
    for single, many in zip(one_by_one, batched):
        assert abs(single.summed - many.summed).max() < 1e-3
        assert single.answer == many.answer


def test_shuffled_vectors_change_only_what_the_model_reads():
    """The ablation's mapping replaces each injected vector by another item's: the identity
    mapping scores as the plain scorer does, a permutation changes the scores."""
    s, sample = scorer()
    plain = s.score([sample], TITLES)[0].summed
    s.shuffled = {i: i for i in ITEMS}
    assert np.allclose(s.score([sample], TITLES)[0].summed, plain)
    s.shuffled = dict(zip(ITEMS, ITEMS[1:] + ITEMS[:1]))
    assert not np.allclose(s.score([sample], TITLES)[0].summed, plain, atol=1e-4)


def test_prompt_without_listing_has_slots_for_the_history_only():
    s, sample = scorer()
    s.listing = False
    ids, _ = s.prompt(sample, TITLES)
    assert int((ids == s.placeholder_id).sum()) == len(sample.history)
    assert len(s.score([sample], TITLES)[0].summed) == len(sample.candidates)


def test_candidate_vectors_precede_each_answer_and_answers_are_decoded():
    """With candidate vectors each candidate's likelihood is read after its own projected
    vector (a full forward with the vector between prompt and answer gives the same), and a
    greedy answer, which the prompt alone decides, is decoded rather than read off."""
    s, sample = scorer()
    s.candidate_vectors = True
    cases = two_cases(sample)
    results = s.score(cases, TITLES, generate=True, max_new_tokens=8)
    for case, result in zip(cases, results):
        prompt, slots = render_llara(case, TITLES, hybrid=True)
        prompt_ids = s.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        base = s.model.get_base_model()
        for k, c in enumerate(case.candidates):
            cont = (s.tokenizer(" " + TITLES[c], add_special_tokens=False)["input_ids"]
                    + [s.tokenizer.eos_token_id])
            ids = torch.tensor([prompt_ids + cont])
            with torch.no_grad():
                embeds = hybrid_embeds(base, s.projector, s.item_table, ids, torch.tensor(slots),
                                       s.placeholder_id, hybrid=True)
                vector = s.projector(s.item_table[torch.tensor([c])])[None]
                embeds = torch.cat([embeds[:, :len(prompt_ids)], vector,
                                    embeds[:, len(prompt_ids):]], 1)
                logits = s.model(inputs_embeds=embeds, use_cache=False).logits[0].float()
            lp = torch.log_softmax(logits[len(prompt_ids):-1], -1)
            expected = lp.gather(1, torch.tensor(cont)[:, None]).sum().item()
            assert abs(result.summed[k] - expected) < 1e-3, (k, result.summed[k], expected)
    assert (s.answers_read_off, s.answers_decoded) == (0, 2)
    assert [r.answer for r in results] == [greedy_reference(s, c, 8) for c in cases]


def test_the_two_shuffled_ablations_move_only_their_own_vectors():
    """``shuffle="history"`` replaces the history's vectors only, ``"candidates"`` the
    vectors before the answers only: the two ablation rows of a candidate-vector system."""
    s, sample = scorer()
    s.candidate_vectors = True
    plain_prompt, plain_prefixes = s.prompt(sample, TITLES)[1], s.candidate_prefixes([sample])
    s.shuffled = {i: ITEMS[(k + 1) % len(ITEMS)] for k, i in enumerate(ITEMS)}
    s.shuffle = "history"
    assert not torch.equal(s.prompt(sample, TITLES)[1], plain_prompt)
    assert torch.equal(s.candidate_prefixes([sample]), plain_prefixes)
    s.shuffle = "candidates"
    assert torch.equal(s.prompt(sample, TITLES)[1], plain_prompt)
    assert not torch.equal(s.candidate_prefixes([sample]), plain_prefixes)
