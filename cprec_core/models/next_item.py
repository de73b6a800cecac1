"""What SASRec and GRU4Rec share (RecBole's ``SequentialRecommender``, without its config):
an encoder of left-padded item histories, one hidden state per position, scored against the
item embeddings by a dot product, trained by next-item cross-entropy: over every item (full
softmax), or over the target and ``negatives`` items drawn uniformly per position (sampled
softmax, as HSTU's SASRec baseline trains; Klenitskiy & Vasilev, RecSys 2023, show it
beats SASRec's original binary loss). With ``l2_norm`` in the shape both sides are
L2-normalised first, so a score is a cosine similarity (divided by the loss's temperature
in training). The item table is the ID embeddings, plus an LLM's adapted title embeddings
where the model has them (``text``, cprec_core.models.text_items)."""

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

    def _scored(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states or item rows as they enter a score (L2-normalised with
        ``shape.l2_norm``)."""
        return F.normalize(x, dim=-1, eps=1e-6) if getattr(self.shape, "l2_norm", False) else x

    def loss(self, seq: torch.Tensor, targets: torch.Tensor, negatives: int = 0,
             temperature: float = 1.0) -> torch.Tensor:
        """Next-item cross-entropy at every non-padding position (targets 0 are ignored):
        over every item with ``negatives`` 0, else over the target and ``negatives`` items
        drawn uniformly (torch's global generator) for each sequence and shared by its
        positions, a drawn item equal to a position's target masked out there (HSTU draws
        per position: the same expected loss, at a tenth of the cost on a CPU). Logits are
        divided by ``temperature``."""
        hidden = self._scored(self(seq))
        table = self._scored(self.item_table())
        if not negatives:
            logits = hidden @ table[1:].t() / temperature
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   targets.reshape(-1) - 1, ignore_index=-1)
        drawn = torch.randint(1, table.shape[0], (len(seq), negatives), device=seq.device)
        positive = (hidden * table[targets]).sum(-1, keepdim=True)  # (batch, length, 1)
        sampled = torch.einsum("bnh,bkh->bnk", hidden, table[drawn])
        sampled = sampled.masked_fill(drawn[:, None, :] == targets[..., None], -5e4 * temperature)
        logits = torch.cat([positive, sampled], -1)[targets > 0] / temperature
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long,
                                                   device=seq.device))

    def scores(self, seq: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the next item after each history: all items (batch, n_items), column j
        for item j + 1, or the given candidates (batch, k)."""
        last = self._scored(self(seq)[:, -1])
        table = self._scored(self.item_table())
        if candidates is None:
            return last @ table[1:].t()
        return torch.einsum("bh,bkh->bk", last, table[candidates])

    def item_embeddings(self) -> torch.Tensor:
        return self.item_table().detach()
