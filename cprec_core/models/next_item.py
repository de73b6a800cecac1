"""What SASRec and GRU4Rec share (RecBole's ``SequentialRecommender``, without its config):
an encoder of left-padded item histories, one hidden state per position, scored against the
item embeddings by a dot product, trained by full-softmax next-item cross-entropy."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class NextItemModel(nn.Module):
    """Subclasses set ``self.items`` (an ``nn.Embedding`` of n_items + 1 rows, row 0 the
    padding) and ``forward``: (batch, length) left-padded ids -> (batch, length, hidden)."""

    items: nn.Embedding

    def loss(self, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-item cross-entropy at every non-padding position (targets 0 are ignored)."""
        logits = self(seq) @ self.items.weight[1:].t()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1) - 1,
                               ignore_index=-1)

    def scores(self, seq: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the next item after each history: all items (batch, n_items), column j
        for item j + 1, or the given candidates (batch, k)."""
        last = self(seq)[:, -1]
        if candidates is None:
            return last @ self.items.weight[1:].t()
        return torch.einsum("bh,bkh->bk", last, self.items(candidates))

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight.detach()
