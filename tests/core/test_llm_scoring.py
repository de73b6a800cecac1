"""Shared-prefix likelihood ranking equals scoring each candidate with a full forward."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cprec_core.config import LoraSettings
from cprec_core.evaluation.llm import LLMScorer
from cprec_core.models.hybrid import Projector, add_placeholder_token, hybrid_embeds
from cprec_core.models.loader import TINY
from cprec_core.models.lora import apply_lora
from cprec_core.models.tokenizer import train_tiny_tokenizer
from cprec_core.sft_data import SFTSample, render

ITEMS = list(range(1, 9))
TITLES = {i: f"Film number {i} of {1990 + i}" for i in ITEMS}


def scorer():
    sample = SFTSample(0, [1, 2, 3], [4, 5, 6, 7, 8], 6)
    tok = train_tiny_tokenizer([render(sample, TITLES, True)[0]] * 4)
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


def test_shared_prefix_scores_equal_full_forwards():
    s, sample = scorer()
    summed, mean = s.candidate_logprobs(sample, TITLES)
    prompt, slots = render(sample, TITLES, hybrid=True)
    prompt_ids = s.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for k, c in enumerate(sample.candidates):
        cont = s.tokenizer(" " + TITLES[c], add_special_tokens=False)["input_ids"] + [s.tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + cont])
        with torch.no_grad():
            embeds = hybrid_embeds(s.model.get_base_model(), s.projector, s.item_table, ids,
                                   torch.tensor(slots), s.placeholder_id, hybrid=True)
            logits = s.model(inputs_embeds=embeds, use_cache=False).logits[0].float()
        lp = torch.log_softmax(logits[len(prompt_ids) - 1:-1], -1)
        expected = lp.gather(1, torch.tensor(cont)[:, None]).sum().item()
        assert abs(summed[k] - expected) < 1e-3, (k, summed[k], expected)
        assert abs(mean[k] - expected / len(cont)) < 1e-3
