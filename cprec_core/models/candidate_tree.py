"""One forward for a prompt and all its candidate continuations (the tree mask).

Row b of a batch holds case b's prompt, right padding to the widest prompt (``width``
columns), then its candidates' input tokens one after another (each title without its final
EOS, which is only ever a target), then right padding. Each continuation token sees the
prompt and its own earlier tokens, nothing of the other candidates, and its positions start
where the prompt ends. Only the continuation rows carry a mask, passed as (B, 1, C, W + C);
``tree_attention`` (registered as the ``cprec_tree`` attention) gives the prompt columns plain
causal attention, whose kernel skips the masked half, so the prompt is computed once for all
candidates. The scorer (cprec_core.evaluation.llm) and the candidate-aware training
(cprec_core.training.rank_loss) both build their batches here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

TREE_ATTENTION = "cprec_tree"


def tree_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                   sliding_window=None, **kwargs):
    """SDPA, except for a tree forward: a mask with fewer query rows than there are queries
    covers only the last rows (the continuations); the leading columns are right-padded
    prompts and take plain causal attention, which costs less than one (W, W) mask.

    A sliding-window layer (Gemma 3's local layers; ``sliding_window`` as transformers
    passes it) sees only keys fewer than ``sliding_window`` positions back, as in a plain
    forward: when a tree is longer than the window, both parts get that limit, by
    ``position_ids`` (a continuation's positions follow its prompt, not its column)."""
    if attention_mask is None or attention_mask.shape[-2] == query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    w = query.shape[2] - attention_mask.shape[-2]
    gqa = query.shape[1] != key.shape[1]
    prompt_mask, conts_mask = None, attention_mask
    positions = kwargs.get("position_ids")
    if sliding_window is not None and query.shape[2] > sliding_window:
        if positions is None:
            raise ValueError("a tree forward through sliding-window attention needs position_ids")
        near = (positions[:, :, None] - positions[:, None, :]) < sliding_window  # (B, q, k)
        causal = torch.ones(w, w, dtype=torch.bool, device=query.device).tril()
        prompt_mask = (causal & near[:, :w, :w])[:, None]
        conts_mask = attention_mask & near[:, None, w:]
    if prompt_mask is None:
        prompt = F.scaled_dot_product_attention(query[:, :, :w], key[:, :, :w], value[:, :, :w],
                                                is_causal=True, scale=scaling, enable_gqa=gqa)
    else:
        prompt = F.scaled_dot_product_attention(query[:, :, :w], key[:, :, :w], value[:, :, :w],
                                                attn_mask=prompt_mask, scale=scaling,
                                                enable_gqa=gqa)
    conts = F.scaled_dot_product_attention(query[:, :, w:], key, value, attn_mask=conts_mask,
                                           scale=scaling, enable_gqa=gqa)
    return torch.cat([prompt, conts], 2).transpose(1, 2).contiguous(), None


def sliding_window_of(config) -> int | None:
    """The window of the model's sliding-window layers (Gemma 3's local layers; Qwen2's
    with ``use_sliding_window``), None when every layer attends to the whole sequence."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return None
    return getattr(config, "sliding_window", None)


AttentionInterface.register(TREE_ATTENTION, tree_attention)
AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)


@dataclass
class TreeBatch:
    """The inputs of one tree forward and where its predictions are read.

    ``first_rows``: per case, the column whose output predicts every candidate's first token
    (the prompt's last); ``rows``/``cols``: the continuation columns, each predicting the
    next token of its candidate (``targets``), in case, candidate, token order; ``sizes[b][k]``:
    how many of those belong to candidate k of case b; ``tokens[b][k]``: candidate k's tokens
    (title and EOS)."""

    embeds: torch.Tensor  # (B, width + C, d)
    mask: torch.Tensor  # (B, 1, C, width + C) bool
    positions: torch.Tensor  # (B, width + C)
    lengths: torch.Tensor  # (B,) prompt lengths, on the CPU
    width: int
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    first_targets: torch.Tensor  # (B, K)
    sizes: list[list[int]]
    tokens: list[list[list[int]]]
    prefixed: bool = False  # each branch starts with its candidate's vector (see build_tree)

    def forward_kwargs(self) -> dict:
        return {"inputs_embeds": self.embeds, "attention_mask": self.mask,
                "position_ids": self.positions}


def build_tree(prompts: list[torch.Tensor], continuations: list[list[list[int]]],
               embed: Callable[[torch.Tensor], torch.Tensor],
               prefixes: torch.Tensor | None = None) -> TreeBatch:
    """``prompts[b]``: case b's prompt embeddings (P_b, d); ``continuations[b][k]``: candidate
    k's tokens, title then EOS; ``embed``: token ids -> input embeddings. Every case needs the
    same number of candidates. Differentiable through ``prompts``, ``embed`` and ``prefixes``.

    ``prefixes`` (B, K, d): an input row per candidate placed before its tokens, seen by that
    branch only and never scored (the candidate's collaborative vector). Its column then
    predicts the candidate's first token, so every token of a branch is a target of the
    branch (``prefixed``) and the prompt's last column predicts nothing that is scored."""
    counts = {len(cs) for cs in continuations}
    if len(counts) > 1:
        raise ValueError(f"cases in one tree batch need the same number of candidates, got"
                         f" {sorted(counts)}")
    dev, dtype = prompts[0].device, prompts[0].dtype
    # a branch's input positions: its tokens but the last; with a prefix, the prefix first
    inputs = [[c[:-1] for c in cs] for cs in continuations]
    shift = 0 if prefixes is None else 1
    lengths = torch.tensor([len(p) for p in prompts])
    w = int(lengths.max())
    c_width = max(sum(len(t) + shift for t in ts) for ts in inputs)
    mask = torch.zeros(len(prompts), 1, c_width, w + c_width, dtype=torch.bool)
    positions = torch.zeros(len(prompts), w + c_width, dtype=torch.long)
    rows, cols, targets, pieces = [], [], [], []
    for b, (prompt, ts, cs) in enumerate(zip(prompts, inputs, continuations)):
        p, sizes = len(prompt), [len(t) + shift for t in ts]
        n = sum(sizes)
        owner = torch.repeat_interleave(torch.arange(len(ts)), torch.tensor(sizes))
        mask[b, 0, :n, :p] = True
        mask[b, 0, :n, w:w + n] = torch.ones(n, n, dtype=torch.bool).tril() & (
            owner[:, None] == owner[None, :])
        pad = torch.arange(n, c_width)
        mask[b, 0, pad, w + pad] = True  # padding rows see themselves (no empty softmax)
        conts = embed(torch.tensor([t for tok in ts for t in tok], dtype=torch.long, device=dev))
        if prefixes is not None:  # each branch: its prefix row, then its token rows
            rows_of = torch.split(conts, [len(t) for t in ts])
            conts = torch.cat([torch.cat([prefixes[b, k][None].to(conts.dtype), r])
                               for k, r in enumerate(rows_of)])
        d = prompt.shape[-1]
        pieces.append(torch.cat([prompt, prompt.new_zeros(w - p, d), conts.to(dtype),
                                 prompt.new_zeros(c_width - n, d)]))
        positions[b, :p] = torch.arange(p)
        positions[b, w:w + n] = torch.cat([torch.arange(p, p + k) for k in sizes])
        rows += [b] * n
        cols += range(w, w + n)
        targets += [t for c in cs for t in c[1 - shift:]]
    return TreeBatch(
        torch.stack(pieces), mask.to(dev), positions.to(dev), lengths, w,
        torch.tensor(rows, device=dev), torch.tensor(cols, device=dev),
        torch.tensor(targets, dtype=torch.long, device=dev),
        torch.tensor([[c[0] for c in cs] for cs in continuations], device=dev),
        [[len(t) + shift for t in ts] for ts in inputs], continuations, prefixes is not None)


def summed_logprobs(batch: TreeBatch, first_logp: torch.Tensor,
                    rest_logp: torch.Tensor) -> torch.Tensor:
    """(B, K) summed log-probability of each candidate's tokens, from the first tokens'
    log-probabilities (B, K) and the continuation targets' (N,) in ``rows`` order."""
    owners = torch.tensor([b * len(sizes) + k for b, sizes in enumerate(batch.sizes)
                           for k, n in enumerate(sizes) for _ in range(n)],
                          device=rest_logp.device)
    rest = torch.zeros(first_logp.numel(), dtype=rest_logp.dtype, device=rest_logp.device)
    rest = rest.index_add(0, owners, rest_logp)
    if batch.prefixed:  # every token is scored inside its branch
        return rest.view_as(first_logp)
    return first_logp + rest.view_as(first_logp)


def token_counts(batch: TreeBatch) -> torch.Tensor:
    """(B, K) tokens of each candidate's answer (title and EOS): the per-token mean's divisor."""
    return torch.tensor([[len(c) for c in cs] for cs in batch.tokens], dtype=torch.float32)
