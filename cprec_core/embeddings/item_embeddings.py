"""Every item's title embedded by a language model: one forward per item.

    python -m cprec_core.embeddings.item_embeddings --profile demo --source wsa

LLM2Rec (He et al., KDD 2025) fine-tunes an LLM on item-title sequences, as CPT does here,
then embeds each title with it and gives the vectors to SASRec or GRU4Rec; this is that
second step, for one source of weights: ``base`` (the model as published) or a CPT variant
(its LoRA adapter merged into the base). A title is tokenised as the corpus renders it (the
tokenizer's BOS where it uses one, no other special tokens), run through the decoder, and
its last hidden layer pooled over the title's tokens: ``mean`` (LLM2Rec's and LLMEmb's
choice; their base-model figures favour it far over the last token) or ``last``.

Titles come from the corpus snapshot (``items.parquet``, every domain's items), so this never
opens the database. The files (``ItemEmbeddingFiles`` of cprec_core.layout): the vectors
and each row's global item id in safetensors, and a manifest with the model, the adapter's
fingerprint, the pooling, the snapshot's items and what it cost.
"""

from __future__ import annotations

import hashlib
import json
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from cprec_core.config import Profile
from cprec_core.layout import ItemEmbeddingFiles, TrainedAdapter
from cprec_core.models.loader import load_base_model, resolve_device, resolve_dtype
from cprec_core.progress import Log, Progress, duration
from cprec_core.prompts import bos_prefix
from cprec_core.provenance import git_revision, processor
from cprec_core.systems import EMBEDDING_SOURCES, embedding_asset

MAX_TITLE_TOKENS = 64  # titles are at most data.max_title_chars (160) characters


class EmbeddingError(ValueError):
    """The source cannot be embedded with (no adapter, no snapshot), or an item has no vector."""


@dataclass(frozen=True)
class ItemVectors:
    """Loaded item embeddings: row j is the title of global item ``item_idx[j]``."""

    item_idx: np.ndarray
    embeddings: torch.Tensor  # (items, dim), fp32
    source: str
    fingerprint: str  # of the weights that embedded the titles
    pooling: str
    shuffle_seed: int | None = None  # rows permuted among one domain's items (shuffled())

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def rows(self, items) -> torch.Tensor:
        """The vectors of global ids ``items``, in that order."""
        items = np.asarray(items, dtype=np.int64)
        at = np.searchsorted(self.item_idx, items).clip(max=len(self.item_idx) - 1)
        missing = items[self.item_idx[at] != items]
        if len(missing):
            raise EmbeddingError(f"{len(missing)} items have no {self.source!r} embedding"
                                 f" (e.g. {missing[:5].tolist()}): the embeddings predate the"
                                 f" items; materialise {embedding_asset(self.source)} again")
        return self.embeddings[torch.as_tensor(at)]

    def provenance(self) -> dict:
        found = {"source": self.source, "fingerprint": self.fingerprint, "pooling": self.pooling}
        return found if self.shuffle_seed is None else {**found, "shuffle_seed": self.shuffle_seed}

    def shuffled(self, items, seed: int = 0) -> ItemVectors:
        """These vectors with the rows of ``items`` (one domain's global ids) permuted among
        them, no item keeping its own (a derangement): every item still has a vector of the
        same distribution, none says its title. The ablation that can fail: a system whose
        lift comes from the titles loses it here (docs/ITEM_TEXT.md)."""
        rows = np.searchsorted(self.item_idx, np.asarray(sorted(items), dtype=np.int64))
        self.rows(sorted(items))  # every item has a vector, or a clear error
        rng = np.random.default_rng(seed)
        moved = rows.copy()
        while len(rows) > 1 and (moved == rows).any():
            moved = rng.permutation(rows)
        table = self.embeddings.clone()
        table[torch.as_tensor(rows)] = self.embeddings[torch.as_tensor(moved)]
        return dataclasses.replace(self, embeddings=table, shuffle_seed=seed)


def load_item_vectors(files: ItemEmbeddingFiles) -> ItemVectors:
    manifest = json.loads(files.manifest.read_text())
    tensors = load_file(files.weights)
    return ItemVectors(tensors["item_idx"].numpy(), tensors["embeddings"].float(),
                       manifest["source"], manifest["fingerprint"], manifest["pooling"])


def adapter_fingerprint(run: TrainedAdapter) -> str:
    """What identifies a trained adapter: its plan (corpus, config, variant, model) and
    the bytes of its weights."""
    plan = run.read_manifest().plan_fingerprint
    digest = hashlib.sha256(run.adapter_weights.read_bytes()).hexdigest()
    return hashlib.sha256(f"{plan}:{digest}".encode()).hexdigest()[:16]


def source_adapter(profile: Profile, source: str) -> TrainedAdapter | None:
    """The CPT adapter of ``source`` (None for the base model), which must be trained."""
    if source not in EMBEDDING_SOURCES:
        raise EmbeddingError(f"unknown item embedding source {source!r}; known:"
                             f" {EMBEDDING_SOURCES}")
    if source == "base":
        return None
    run = profile.layout.cpt_adapter(source)
    if not run.exists():
        raise EmbeddingError(f"{run.adapter}: no CPT adapter of variant {source!r};"
                             f" materialise its CPT asset first")
    return run


def tokenise_titles(tokenizer, titles: list[str]) -> tuple[list[list[int]], int]:
    """Each title's ids, the tokenizer's BOS first where it uses one, and how many ids that
    prefix takes (pooling skips it)."""
    bos = bos_prefix(tokenizer)
    ids = tokenizer(titles, add_special_tokens=False)["input_ids"]
    return [bos + x[:MAX_TITLE_TOKENS] for x in ids], len(bos)


@torch.no_grad()
def embed_titles(model, ids: list[list[int]], skip: int, pooling: str, batch_size: int,
                 pad_id: int, device: torch.device, progress: Progress | None = None
                 ) -> torch.Tensor:
    """(titles, width) fp32: the decoder's last hidden layer (after its final norm) pooled
    over each title's tokens, the first ``skip`` (BOS) left out. Titles are batched by
    length, right-padded; a causal model's states at the real tokens do not see the pads."""
    decoder = model.get_decoder()
    width = model.config.get_text_config().hidden_size
    out = torch.zeros(len(ids), width)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        longest = max(len(ids[i]) for i in batch)
        tokens = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, i in enumerate(batch):
            tokens[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        hidden = decoder(input_ids=tokens.to(device), attention_mask=mask.to(device),
                         use_cache=False).last_hidden_state.float().cpu()
        lengths = mask.sum(1)
        if pooling == "last":
            pooled = hidden[torch.arange(len(batch)), lengths - 1]
        else:
            keep = mask.clone().float()
            keep[:, :skip] = 0.0
            pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        out[torch.as_tensor(batch)] = pooled
        if progress is not None:
            progress.update(min(start + batch_size, len(order)))
    return out


def embed_items(profile: Profile, source: str, log: Log = print, every_s: float | None = None,
                pooling: str | None = None, files: ItemEmbeddingFiles | None = None,
                adapter: TrainedAdapter | None = None) -> dict:
    """Every item of the corpus snapshot embedded with ``source``'s weights, written to
    ``files`` (default: the profile's folder of that source); returns the manifest.
    ``pooling`` overrides ``item_text.pooling``; ``adapter`` gives the CPT adapter
    directly (a scaling-curve checkpoint) instead of the source's."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    layout, cfg = profile.layout, profile.item_text
    pooling = pooling or cfg.pooling
    files = files or layout.item_embeddings(source)
    run = adapter if adapter is not None else source_adapter(profile, source)
    if not layout.corpus_items.is_file() or not layout.tokenizer_config.is_file():
        raise EmbeddingError(f"{layout.corpus_dir}: no corpus snapshot (items and tokenizer);"
                             " materialise cpt_corpus first")
    items = pq.read_table(layout.corpus_items, columns=["item_idx", "title"]).to_pydict()
    if not items["item_idx"]:
        raise EmbeddingError(f"{layout.corpus_items}: no items")
    order = np.argsort(np.asarray(items["item_idx"], dtype=np.int64), kind="stable")
    item_idx = np.asarray(items["item_idx"], dtype=np.int64)[order]
    titles = [items["title"][i] for i in order]

    started = time.perf_counter()
    device = resolve_device(profile.device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer_dir)
    model = load_base_model(profile.model.name, layout.cache_dir, dtype, tokenizer,
                            profile.model.trust_remote_code,
                            allow_pickle=profile.model.allow_pickle_weights)
    if run is not None:
        model = PeftModel.from_pretrained(model, run.adapter).merge_and_unload()
    model = model.to(device).eval()
    loaded = time.perf_counter()
    ids, skip = tokenise_titles(tokenizer, titles)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    label = f"item embeddings {source}"
    log(f"{label}: {len(titles):,} titles, {sum(map(len, ids)):,} tokens, {pooling} pooling,"
        f" {dtype} on {device}")
    progress = Progress(log, label, len(titles), "titles", every_s)
    vectors = embed_titles(model, ids, skip, pooling, cfg.batch_size, pad, torch.device(device),
                           progress)
    seconds = time.perf_counter() - loaded
    if not torch.isfinite(vectors).all():
        raise EmbeddingError(f"{label}: the model gave non-finite hidden states")
    fingerprint = (adapter_fingerprint(run) if run is not None else
                   hashlib.sha256(f"base:{profile.model.name}".encode()).hexdigest()[:16])
    snapshot = hashlib.sha256(layout.corpus_items.read_bytes()).hexdigest()[:16]
    manifest = {
        "source": source, "model": profile.model.name,
        "adapter": str(run.adapter) if run is not None else None,
        "fingerprint": fingerprint, "pooling": pooling, "items": len(titles),
        "items_snapshot": snapshot, "dim": int(vectors.shape[1]),
        "tokens": int(sum(map(len, ids))), "load_seconds": round(loaded - started, 2),
        "seconds": round(seconds, 2), "items_per_second": round(len(titles) / seconds, 1),
        "dtype": str(dtype).removeprefix("torch."), "device": processor(device),
        "threads": torch.get_num_threads(), "git_revision": git_revision(),
        "version": hashlib.sha256(f"{fingerprint}:{pooling}:{snapshot}".encode()).hexdigest()[:16],
    }
    # the weights file marks finished embeddings (ItemEmbeddingFiles.exists): the old one
    # goes first, the new one is renamed into place last
    files.path.mkdir(parents=True, exist_ok=True)
    files.weights.unlink(missing_ok=True)
    files.manifest.write_text(json.dumps(manifest, indent=2))
    staged = files.weights.with_name(files.weights.name + ".tmp")
    save_file({"embeddings": vectors.contiguous(), "item_idx": torch.as_tensor(item_idx)},
              staged)
    staged.replace(files.weights)
    log(f"{label}: {len(titles):,} items in {duration(seconds)}"
        f" ({manifest['items_per_second']} items/s; model loaded in"
        f" {duration(loaded - started)}) -> {files.path}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    import argparse

    from cprec_core.cli import add_profile_arguments, profile_from_args, run_tool

    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--source", required=True, choices=EMBEDDING_SOURCES,
                        help="base, or the CPT variant whose adapter embeds the titles")
    parser.add_argument("--pooling", choices=("mean", "last"),
                        help="default: the profile's item_text.pooling")
    parser.add_argument("--out", type=Path, help="another folder than the profile's")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)

    def work() -> None:
        embed_items(profile, args.source, pooling=args.pooling,
                    files=ItemEmbeddingFiles(args.out) if args.out else None)

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    raise SystemExit(main())
