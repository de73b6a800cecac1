"""4-bit QLoRA (``model.quantization: 4bit``): the decision, made before any weight is read.

The frozen base is loaded as NF4 with double quantisation and bf16 compute
(``transformers.BitsAndBytesConfig``, as in the QLoRA paper) and made trainable for LoRA by
``peft.prepare_model_for_kbit_training``. bitsandbytes' 4-bit kernels need a CUDA GPU: on
CPU, or without the package, ``QuantizationError`` names the field to change, so a run fails
at start-up rather than after minutes of loading.
"""

from __future__ import annotations

import importlib.util

import torch


class QuantizationError(ValueError):
    """``model.quantization`` cannot be honoured on this device or installation."""


def check_quantization(setting: str, device: str, installed: bool = True) -> None:
    """Raises ``QuantizationError`` where ``setting`` cannot run on ``device``;
    ``installed=False`` skips the bitsandbytes check (a dry run for another machine)."""
    if setting == "none":
        return
    if setting != "4bit":
        raise QuantizationError(f"model.quantization {setting!r} is not none or 4bit")
    if not str(device).startswith("cuda"):
        raise QuantizationError(
            f"model.quantization: 4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels), the"
            f" device is {device}: set model.quantization: none or device: cuda")
    if installed and importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError("model.quantization: 4bit needs the bitsandbytes package"
                                " (pip install bitsandbytes), or set model.quantization: none")


def quantization_config(setting: str, device: str, installed: bool = True):
    """The ``BitsAndBytesConfig`` for ``setting`` (None for ``none``), after the checks."""
    check_quantization(setting, device, installed)
    if setting == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def quantization_kwargs(setting: str, device) -> dict:
    """Extra ``from_pretrained`` arguments: none for ``none``; for ``4bit`` the config, bf16
    for the unquantised parts and every weight on this process's GPU (a 4-bit model cannot
    be moved after loading, so accelerate's ``prepare`` must find it in place)."""
    config = quantization_config(setting, str(device))
    if config is None:
        return {}
    index = torch.device(device).index
    if index is None:
        index = torch.cuda.current_device()
    return {"quantization_config": config, "dtype": torch.bfloat16, "device_map": {"": index}}


def prepare_for_training(model, setting: str, gradient_checkpointing: bool):
    """``peft.prepare_model_for_kbit_training`` for a 4-bit model (fp32 norms and head
    input, input gradients for checkpointing); other models are returned as they are."""
    if setting == "none":
        return model
    if not getattr(model, "is_loaded_in_4bit", False):
        raise QuantizationError(
            "model.quantization: 4bit, but the model was loaded unquantised: the loader must"
            " pass quantization_kwargs(...) to from_pretrained")
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False})
