"""A next-item model's item table that reads a language model's title embeddings.

LLM2Rec (He et al., KDD 2025) and LLMEmb give a sequential recommender each item's title
embedded by an LLM; here the table of SASRec or GRU4Rec becomes

    item(i) = ID embedding(i) + adapter(text(i))      (or adapter(text(i)) alone: text_only)

where ``text`` is the frozen embedding of the title (cprec_core.embeddings.item_embeddings),
standardised per dimension over the domain's items, and ``adapter`` a two-layer MLP into the
encoder's width, trained with the rest. The frozen vectors are a buffer, so the weights file
holds them and a loaded model needs nothing else. Row 0 (padding) stays zero.
"""

from __future__ import annotations

import torch
from torch import nn


class TextItems(nn.Module):
    def __init__(self, n_items: int, text_dim: int, hidden: int, adapter_hidden: int,
                 dropout: float, text_only: bool):
        super().__init__()
        self.text_only = text_only
        self.register_buffer("text", torch.zeros(n_items + 1, text_dim))
        self.adapter = nn.Sequential(nn.Linear(text_dim, adapter_hidden), nn.GELU(),
                                     nn.Dropout(dropout), nn.Linear(adapter_hidden, hidden))

    @torch.no_grad()
    def set_text(self, vectors: torch.Tensor) -> None:
        """``vectors``: (n_items, text_dim) raw embeddings of items 1..n_items, stored
        standardised (each dimension to mean 0 and sd 1 over these items)."""
        if vectors.shape != (self.text.shape[0] - 1, self.text.shape[1]):
            raise ValueError(f"text vectors of shape {tuple(vectors.shape)}; the model expects"
                             f" {(self.text.shape[0] - 1, self.text.shape[1])}")
        vectors = vectors.float()
        sd = vectors.std(0, keepdim=True) if len(vectors) > 1 else torch.ones_like(vectors[:1])
        self.text[1:] = (vectors - vectors.mean(0, keepdim=True)) / sd.clamp_min(1e-6)
        self.text[0] = 0.0

    def forward(self, id_table: torch.Tensor) -> torch.Tensor:
        """The item table (n_items + 1, hidden) from the ID embeddings' table."""
        adapted = self.adapter(self.text)
        adapted = torch.cat([torch.zeros_like(adapted[:1]), adapted[1:]])  # padding stays 0
        return adapted if self.text_only else id_table + adapted
