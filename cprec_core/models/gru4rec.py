"""GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016).

A GRU over the item ids of a user's history; its output at position t, projected back to the
item embedding size, scores the item at t + 1 by a dot product with the item embeddings.
RecBole's shape (embedding 64, one GRU layer of 128, dropout 0.3 on the embeddings) and the
same full softmax cross-entropy as SASRec (``cprec_core/models/sasrec.py``), so the two
differ only in the sequence encoder. Item 0 is padding.

The trainer (cprec_core.training.next_item) left-pads histories as SASRec wants them; a GRU
must not read the padding first (its biases would move the state), so ``forward`` moves each
row's items to the front, runs the GRU over the real items only (packed), and puts the
outputs back in the left-padded layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cprec_core.models.next_item import NextItemModel


@dataclass(frozen=True)
class GRU4RecShape:
    n_items: int  # real items; ids are 1..n_items, 0 is padding
    hidden: int = 64  # item embedding size
    gru_hidden: int = 128
    layers: int = 1
    dropout: float = 0.3
    max_len: int = 50
    text_dim: int = 0  # width of the LLM title embeddings in the item table (0: IDs only)
    text_hidden: int = 256  # the adapter MLP's hidden width
    text_only: bool = False  # the item table is the adapted text alone
    l2_norm: bool = False  # scores are cosine similarities (cprec_core.models.next_item)


class GRU4Rec(NextItemModel):
    def __init__(self, shape: GRU4RecShape):
        super().__init__()
        self.shape = shape
        self.items = nn.Embedding(shape.n_items + 1, shape.hidden, padding_idx=0)
        self.text = self.text_items(shape)
        self.dropout = nn.Dropout(shape.dropout)
        self.gru = nn.GRU(shape.hidden, shape.gru_hidden, shape.layers, batch_first=True,
                          bias=False)
        self.out = nn.Linear(shape.gru_hidden, shape.hidden)
        nn.init.xavier_normal_(self.items.weight)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, length) left-padded item ids -> (batch, length, hidden); padding
        positions hold zeros."""
        n = seq.shape[1]
        lengths = (seq != 0).sum(1)
        pad = n - lengths
        cols = torch.arange(n, device=seq.device)[None]
        front = seq.gather(1, (cols + pad[:, None]) % n)  # each row's items first
        packed = pack_padded_sequence(self.dropout(self.embed(front)),
                                      lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        states, _ = self.gru(packed)
        states = pad_packed_sequence(states, batch_first=True, total_length=n)[0]
        states = states * (cols < lengths[:, None])[..., None]  # an empty row stays zero
        back = ((cols - pad[:, None]) % n)[..., None].expand(-1, -1, states.shape[-1])
        return self.out(states.gather(1, back)) * (seq != 0)[..., None]  # left-padded again
