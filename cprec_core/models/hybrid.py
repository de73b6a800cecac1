"""LLaRA's hybrid item representation: ``Title [emb]``, where the placeholder token's input
embedding is replaced by ``projector(sasrec_item_embedding)``. The language model then runs
on ``inputs_embeds``, in training and in generation.
"""

from __future__ import annotations

import torch
from torch import nn

from cprec_core.prompts import PLACEHOLDER


class Projector(nn.Module):
    """MLP from the collaborative space (SASRec, d=64) to the LLM's input space."""

    def __init__(self, item_dim: int, model_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(item_dim, model_dim), nn.GELU(),
                                 nn.Linear(model_dim, model_dim))

    def forward(self, item_embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(item_embeddings)


def add_placeholder_to_tokenizer(tokenizer) -> int:
    """The id of ``[emb]``, added as a special token (one id, never split) where missing."""
    if PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [PLACEHOLDER]})
    return tokenizer.convert_tokens_to_ids(PLACEHOLDER)


def add_placeholder_token(tokenizer, model) -> int:
    """Adds ``[emb]`` as a special token (one id, never split) and grows the embedding
    matrix by one row, set to the mean of the other rows. The row is never read as an input
    (it is always replaced); with tied embeddings it is also an output logit. It is not
    trained, so adapters are saved without the embedding matrix."""
    placeholder_id = add_placeholder_to_tokenizer(tokenizer)
    embeddings = model.get_input_embeddings()
    if embeddings.num_embeddings <= placeholder_id:
        old = embeddings.num_embeddings
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():  # deterministic: the mean of the existing rows
            weight = model.get_input_embeddings().weight
            weight[old:] = weight[:old].float().mean(0).to(weight.dtype)
    return placeholder_id


def inject(input_embeds: torch.Tensor, input_ids: torch.Tensor, placeholder_id: int,
           slot_vectors: torch.Tensor) -> torch.Tensor:
    """Replace, in order, the embedding of every placeholder token by ``slot_vectors``
    (one row per placeholder of the batch, row-major order). Other rows are untouched."""
    mask = input_ids == placeholder_id
    if int(mask.sum()) != slot_vectors.shape[0]:
        raise ValueError(f"{int(mask.sum())} placeholders but {slot_vectors.shape[0]} item vectors")
    out = input_embeds.clone()
    out[mask] = slot_vectors.to(out.dtype)
    return out


def hybrid_embeds(model, projector: Projector, item_table: torch.Tensor,
                  input_ids: torch.Tensor, slot_items: torch.Tensor, placeholder_id: int,
                  hybrid: bool) -> torch.Tensor:
    """Input embeddings of a batch: token embeddings, with the placeholders replaced by
    projected SASRec embeddings when ``hybrid`` (text-only batches carry no placeholder)."""
    embeds = model.get_input_embeddings()(input_ids)
    if not hybrid:
        return embeds
    return inject(embeds, input_ids, placeholder_id, projector(item_table[slot_items]))


class HybridLM(nn.Module):
    """The SFT model as one module (so DDP sees every parameter): the peft LLM, the
    projector and the frozen SASRec item table. ``forward`` returns the summed loss over the
    answer tokens (labels != -100, next-token aligned)."""

    def __init__(self, peft_model: nn.Module, projector: Projector, item_table: torch.Tensor,
                 placeholder_id: int):
        super().__init__()
        self.model = peft_model
        self.projector = projector
        self.register_buffer("item_table", item_table, persistent=False)
        self.placeholder_id = placeholder_id

    def forward(self, input_ids, labels, attention_mask, slot_items, hybrid: bool):
        from cprec_core.models.causal_lm import chunked_cross_entropy_sum

        base = self.model.get_base_model()
        embeds = hybrid_embeds(base, self.projector, self.item_table, input_ids, slot_items,
                               self.placeholder_id, hybrid)
        hidden = base.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != -100
        return chunked_cross_entropy_sum(hidden[:, :-1][keep],
                                         base.get_output_embeddings().weight, targets[keep])
