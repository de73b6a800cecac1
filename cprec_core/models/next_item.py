"""What SASRec and GRU4Rec share (RecBole's ``SequentialRecommender``, without its config):
an encoder of left-padded item histories, one hidden state per position, scored against the
item embeddings by a dot product, trained by full-softmax next-item cross-entropy. The item
table is the ID embeddings, plus an LLM's adapted title embeddings where the model has them
(``text``, cprec_core.models.text_items)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cprec_core.models.text_items import TextItems


class NextItemModel(nn.Module):
    """Subclasses set ``self.items`` (an ``nn.Embedding`` of n_items + 1 rows, row 0 the
    padding), ``self.text`` (from ``text_items``) and ``forward``: (batch, length)
    left-padded ids -> (batch, length, hidden), embedding the ids with ``embed``."""

    items: nn.Embedding
    text: TextItems | None

    def text_items(self, shape) -> TextItems | None:
        """The text part of the item table where ``shape.text_dim`` is set."""
        if not shape.text_dim:
            return None
        return TextItems(shape.n_items, shape.text_dim, shape.hidden, shape.text_hidden,
                         shape.dropout, shape.text_only)

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, hidden): row i embeds item i, row 0 the padding."""
        table = self.items.weight
        return table if self.text is None else self.text(table)

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        return F.embedding(seq, self.item_table(), padding_idx=0)

    def loss(self, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-item cross-entropy at every non-padding position (targets 0 are ignored)."""
        logits = self(seq) @ self.item_table()[1:].t()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1) - 1,
                               ignore_index=-1)

    def scores(self, seq: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the next item after each history: all items (batch, n_items), column j
        for item j + 1, or the given candidates (batch, k)."""
        last = self(seq)[:, -1]
        table = self.item_table()
        if candidates is None:
            return last @ table[1:].t()
        return torch.einsum("bh,bkh->bk", last, table[candidates])

    def item_embeddings(self) -> torch.Tensor:
        return self.item_table().detach()
