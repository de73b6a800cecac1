"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal Transformer over the item ids of a user's history; the hidden state at position t
scores the item at t + 1 by a dot product with the (shared) item embeddings. Small and
standard, as in LLaRA and RecBole: learned positions, pre-LayerNorm blocks (``block``
``pre_norm``), full softmax cross-entropy over the domain's items (a genre domain has tens
to hundreds of items, so sampling negatives would only add noise). Item 0 is padding.

``block`` ``original`` is the paper's own layout, as its code and HSTU's SASRec baseline
(the public ML-1M benchmark, docs/BENCHMARK.md) have it: item embeddings times sqrt(d),
the attention's query LayerNormed (keys and values not), the feed-forward (with its own
residual) after a LayerNorm of the attention's sum, no final LayerNorm.

Its item embeddings (``item_embeddings``, d=64) are what LLaRA's projector maps into the
LLM's input space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cprec_core.models.next_item import NextItemModel


@dataclass(frozen=True)
class SASRecShape:
    n_items: int  # real items; ids are 1..n_items, 0 is padding
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    text_dim: int = 0  # width of the LLM title embeddings in the item table (0: IDs only)
    text_hidden: int = 256  # the adapter MLP's hidden width
    text_only: bool = False  # the item table is the adapted text alone
    block: str = "pre_norm"  # or "original" (Kang & McAuley's layout; see the docstring)
    ffn_hidden: int = 0  # the feed-forward's width (0: 4 * hidden)
    activation: str = "gelu"  # or "relu"
    l2_norm: bool = False  # scores are cosine similarities (cprec_core.models.next_item)

    @property
    def ffn_width(self) -> int:
        return self.ffn_hidden or 4 * self.hidden


def _feed_forward(shape: SASRecShape, dropout_out: bool) -> nn.Sequential:
    act = nn.ReLU() if shape.activation == "relu" else nn.GELU()
    layers = [nn.Linear(shape.hidden, shape.ffn_width), act, nn.Dropout(shape.dropout),
              nn.Linear(shape.ffn_width, shape.hidden)]
    return nn.Sequential(*layers, *([nn.Dropout(shape.dropout)] if dropout_out else []))


def _attention(x_q: torch.Tensor, x_kv: torch.Tensor, q_proj, kv_proj, heads: int,
               mask: torch.Tensor, dropout: float) -> torch.Tensor:
    b, n, d = x_q.shape
    q = q_proj(x_q).view(b, n, heads, d // heads).transpose(1, 2)
    k, v = kv_proj(x_kv).view(b, n, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return att.transpose(1, 2).reshape(b, n, d)


class OriginalBlock(nn.Module):
    """Kang & McAuley's block: LayerNormed query over the raw sequence, then a LayerNorm and
    the feed-forward with its own residual (``block: original``)."""

    def __init__(self, shape: SASRecShape):
        super().__init__()
        self.heads, self.p = shape.heads, shape.dropout
        self.norm_q = nn.LayerNorm(shape.hidden, eps=1e-8)
        self.norm_ff = nn.LayerNorm(shape.hidden, eps=1e-8)
        self.q = nn.Linear(shape.hidden, shape.hidden)
        self.kv = nn.Linear(shape.hidden, 2 * shape.hidden)
        self.proj = nn.Linear(shape.hidden, shape.hidden)
        self.ff = _feed_forward(shape, dropout_out=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = self.norm_q(x)
        att = _attention(query, x, self.q, self.kv, self.heads, mask,
                         self.p if self.training else 0.0)
        x = self.norm_ff(query + self.proj(att))
        return x + self.ff(x)


class Block(nn.Module):
    """Pre-LayerNorm self-attention + feed-forward block."""

    def __init__(self, shape: SASRecShape):
        super().__init__()
        hidden, self.heads, self.p = shape.hidden, shape.heads, shape.dropout
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ff = _feed_forward(shape, dropout_out=False)
        self.drop = nn.Dropout(shape.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class SASRec(NextItemModel):
    def __init__(self, shape: SASRecShape):
        super().__init__()
        self.shape = shape
        self.items = nn.Embedding(shape.n_items + 1, shape.hidden, padding_idx=0)
        self.text = self.text_items(shape)
        self.positions = nn.Embedding(shape.max_len, shape.hidden)
        self.dropout = nn.Dropout(shape.dropout)
        original = shape.block == "original"
        self.blocks = nn.ModuleList((OriginalBlock if original else Block)(shape)
                                    for _ in range(shape.layers))
        self.norm = nn.Identity() if original else nn.LayerNorm(shape.hidden)
        self.scale = shape.hidden ** 0.5 if original else 1.0
        nn.init.normal_(self.items.weight, std=0.02)
        # the original scales item embeddings by sqrt(d); its positions start at that size
        nn.init.normal_(self.positions.weight, std=shape.hidden ** -0.5 if original else 0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, length) left-padded item ids -> (batch, length, hidden)."""
        length = seq.shape[1]
        # positions count from the right edge: a history cut to fewer than max_len columns
        # (trim_padding in training) gets the positions it has at full length
        pos = torch.arange(length, device=seq.device) + max(self.shape.max_len - length, 0)
        x = self.dropout(self.embed(seq) * self.scale + self.positions(pos)[None])
        # Additive mask: no attention to later positions or to padding. A large negative
        # number rather than -inf, so padded rows (all keys masked) stay finite instead of
        # turning into NaN and leaking through the next layer's zero attention weights.
        blocked = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seq.device), 1)
        blocked = blocked[None] | (seq == 0)[:, None, :]
        mask = torch.zeros(blocked.shape, device=seq.device).masked_fill(blocked, -1e9)[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def left_pad(histories: list[list[int]], max_len: int) -> torch.Tensor:
    """The last ``max_len`` items of each history, left-padded with 0."""
    out = torch.zeros(len(histories), max_len, dtype=torch.long)
    for row, items in enumerate(histories):
        items = items[-max_len:]
        if items:
            out[row, max_len - len(items):] = torch.tensor(items)
    return out
