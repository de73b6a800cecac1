"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal Transformer over the item ids of a user's history; the hidden state at position t
scores the item at t + 1 by a dot product with the (shared) item embeddings. Small and
standard, as in LLaRA and RecBole: learned positions, pre-LayerNorm blocks, full softmax
cross-entropy over the domain's items (a genre domain has tens to hundreds of items, so
sampling negatives would only add noise). Item 0 is padding.

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


class Block(nn.Module):
    """Pre-LayerNorm self-attention + feed-forward block."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(4 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

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
        self.blocks = nn.ModuleList(Block(shape.hidden, shape.heads, shape.dropout)
                                    for _ in range(shape.layers))
        self.norm = nn.LayerNorm(shape.hidden)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, length) left-padded item ids -> (batch, length, hidden)."""
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        x = self.dropout(self.embed(seq) + self.positions(pos)[None])
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
