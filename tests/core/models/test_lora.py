import pytest
import torch

from cprec_core.config import LoraSettings
from cprec_core.models.loader import TINY
from cprec_core.models.lora import (SharedLoraDropout, apply_lora, fast_dropout,
                                  resolve_target_modules)
from transformers import LlamaConfig, LlamaForCausalLM


def test_fast_dropout_rate_and_scale():
    torch.manual_seed(0)
    x = torch.ones(512, 256)
    y = fast_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))


def test_adapters_reading_one_tensor_share_its_mask_and_eval_is_identity():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, **TINY))
    peft_model = apply_lora(model, LoraSettings(dropout=0.5))
    attn = peft_model.base_model.model.model.layers[0].self_attn
    q, k, o = (getattr(attn, n).lora_dropout["default"] for n in ("q_proj", "k_proj", "o_proj"))
    assert isinstance(q, SharedLoraDropout) and q.shared is k.shared is o.shared
    assert all(p.dtype == torch.float32 for p in peft_model.parameters() if p.requires_grad)
    x, other = torch.randn(4, 64), torch.randn(4, 64)
    peft_model.train()
    assert q(x) is k(x)  # same input -> same mask
    assert not torch.equal(q(other) == 0, q(x) == 0)  # another input -> a new mask
    peft_model.eval()
    assert q(x) is x


def test_peft_dropout_when_sharing_is_off():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, **TINY))
    peft_model = apply_lora(model, LoraSettings(shared_dropout=False))
    drop = peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"]
    assert isinstance(drop, torch.nn.Dropout)


def test_target_modules_are_checked_against_the_architecture():
    """Llama and Qwen2 name their projections alike; GPT-2 does not: a name the model lacks
    is an error naming the setting and the model's linear layers; all-linear takes them all."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, **TINY))
    peft_qwen = apply_lora(qwen, LoraSettings())
    assert peft_qwen.base_model.model.model.layers[0].mlp.down_proj.lora_A
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"cpt.lora.target_modules \['q_proj', .*\]: not linear"
                                         r" layers of this gpt2 model; its linear layers are"
                                         r" \['c_attn', 'c_fc', 'c_proj', 'lm_head'\]"):
        resolve_target_modules(gpt2, LoraSettings().target_modules)
    assert resolve_target_modules(gpt2, ["all-linear"]) == "all-linear"
    peft_gpt2 = apply_lora(gpt2, LoraSettings(target_modules=("c_attn",)))
    assert any("c_attn.lora_A" in name for name, _ in peft_gpt2.named_parameters())
