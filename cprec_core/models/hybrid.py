"""LLaRA's hybrid item representation: ``Title [emb]``, where the placeholder token's input
embedding is replaced by ``projector(sasrec_item_embedding)``. The language model then runs
on ``inputs_embeds``, in training and in generation.

SASRec's item vectors are small (norm ~0.3) and share a large common part, so in the paper's
recipe the projector's biases dominate what it injects: two items' vectors have cosine
~0.95. The candidate-aware systems feed the projector standardised vectors instead
(``collab_inputs``: per dimension zero mean and unit variance over the domain's items, a
fixed transform of the frozen table); ``injection_diagnostics`` measures both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cprec_core.models.candidate_tree import build_tree, summed_logprobs
from cprec_core.models.causal_lm import chunked_cross_entropy_sum, chunked_token_logprobs
from cprec_core.prompts import PLACEHOLDER


class Projector(nn.Module):
    """MLP from the collaborative space (SASRec, d=64) to the LLM's input space, and the
    ranking temperature the candidate-aware objective learns beside it (``log_temperature``,
    0 at the start: summed log-likelihoods of ~10-token titles spread over tens of nats, so
    a softmax over 20 of them is nearly one-hot). The temperature lives here because the
    projector is what the run saves beside its adapter and what DDP/FSDP already handle."""

    def __init__(self, item_dim: int, model_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(item_dim, model_dim), nn.GELU(),
                                 nn.Linear(model_dim, model_dim))
        self.log_temperature = nn.Parameter(torch.zeros(1))  # 1-D: FSDP shards no scalars
        # the residual ranker's gate on the LLM's scores (residual_scores): 0 at the start,
        # so the first ranking is the classic model's; unused by the other objectives
        self.residual_weight = nn.Parameter(torch.zeros(1))

    def forward(self, item_embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(item_embeddings)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a projector saved before the temperature (or the residual gate) was learned:
        # temperature 1, gate 0
        state_dict.setdefault(prefix + "log_temperature", torch.zeros(1))
        state_dict.setdefault(prefix + "residual_weight", torch.zeros(1))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """Per case (row), the candidates' scores at zero mean and unit spread (population
    spread, as cprec_core.evaluation.evaluate.zscore)."""
    spread = scores.std(-1, correction=0, keepdim=True)
    return (scores - scores.mean(-1, keepdim=True)) / torch.where(spread > 0, spread, 1.0)


def residual_scores(llm: torch.Tensor, classic: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The residual ranker's (B, K) scores: z(classic) + weight * z(LLM summed
    log-likelihoods); the evaluation's ``fuse`` with lambda = weight."""
    return zscore(classic.to(llm.dtype)) + weight.to(llm.dtype) * zscore(llm)


def collab_inputs(item_table: torch.Tensor, standardise: bool) -> torch.Tensor:
    """The projector's inputs: SASRec's item table (row 0 is padding), as it is or with each
    dimension standardised over the item rows (row 0 stays zero)."""
    table = item_table.float()
    if not standardise:
        return table
    items = table[1:]
    out = torch.zeros_like(table)
    out[1:] = (items - items.mean(0)) / items.std(0).clamp_min(1e-6)
    return out


@torch.no_grad()
def injection_diagnostics(projector: Projector, inputs: torch.Tensor,
                          token_embeddings: torch.Tensor) -> dict[str, float]:
    """What the injected vectors carry, over every item of the domain: their mean norm
    beside the token embedding rows', the item-specific share (mean norm of a vector minus
    the mean vector, over its mean norm) and the mean cosine between two different items'
    vectors (near 1: every item looks the same to the LLM)."""
    vectors = projector(inputs[1:].to(next(projector.parameters()).dtype)).float()
    norms = vectors.norm(dim=1)
    specific = (vectors - vectors.mean(0)).norm(dim=1)
    unit = vectors / norms.clamp_min(1e-12)[:, None]
    n = len(unit)
    cosine = ((unit.sum(0).square().sum() - n) / max(n * (n - 1), 1)).item()
    return {"items": n, "vector_norm": round(norms.mean().item(), 4),
            "token_row_norm": round(token_embeddings.float().norm(dim=1).mean().item(), 4),
            "item_specific_share": round((specific.mean() / norms.mean()).item(), 4),
            "mean_pairwise_cosine": round(cosine, 4)}


def add_placeholder_to_tokenizer(tokenizer) -> int:
    """The id of ``[emb]``, added as a special token (one id, never split) where missing."""
    if PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [PLACEHOLDER]})
    return tokenizer.convert_tokens_to_ids(PLACEHOLDER)


def add_placeholder_token(tokenizer, model) -> int:
    """Adds ``[emb]`` as a special token (one id, never split) and grows the embedding
    matrix by one row, set to the mean of the other rows (where the matrix has no spare row
    for it: checkpoints often pad their vocabulary). The row is never read as an input (it
    is always replaced) but is an output logit, in a tied or untied LM head alike. It is
    not trained, so adapters are saved without the embedding matrix."""
    placeholder_id = add_placeholder_to_tokenizer(tokenizer)
    embeddings = model.get_input_embeddings()
    if embeddings.num_embeddings <= placeholder_id:
        old = embeddings.num_embeddings
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        # deterministic: the mean of the existing rows, in the LM head too when it is not
        # tied to the input embeddings (its new row would otherwise be a random logit)
        matrices = {id(m.weight): m.weight for m in (model.get_input_embeddings(),
                                                     model.get_output_embeddings())
                    if m is not None}
        with torch.no_grad():
            for weight in matrices.values():
                weight[old:] = weight[:old].float().mean(0).to(weight.dtype)
    return placeholder_id


def as_token_embeddings(embedding: nn.Module, vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` (rows of the embedding matrix's space, what the projector outputs) as the
    embedding module would return them for a token: Gemma 3 multiplies every looked-up row
    by sqrt(hidden size) (``embed_scale``), so an injected vector gets the same factor, or
    it would reach the decoder ~sqrt(d) times smaller than the tokens around it."""
    scale = getattr(embedding, "embed_scale", None)
    if scale is None:
        return vectors
    return vectors * (scale.to(vectors.dtype) if torch.is_tensor(scale) else scale)


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
    embedding = model.get_input_embeddings()
    embeds = embedding(input_ids)
    if not hybrid:
        return embeds
    return inject(embeds, input_ids, placeholder_id,
                  as_token_embeddings(embedding, projector(item_table[slot_items])))


@dataclass
class CandidateInputs:
    """A batch for the candidate-aware forward: each case's prompt token ids, the item
    behind each placeholder of the batch (row-major), each case's candidates' tokens."""

    prompt_ids: list[torch.Tensor]  # (P_b,) each
    slot_items: torch.Tensor  # rows of the item table
    continuations: list[list[list[int]]]  # title and EOS per candidate
    # rows of the item table of every case's candidates (row-major): each candidate's answer
    # is then read after its own vector (candidate_tree's prefixes); None: titles alone
    candidate_slots: torch.Tensor | None = None


class HybridLM(nn.Module):
    """The SFT model as one module (so DDP sees every parameter): the peft LLM, the
    projector and the frozen SASRec item table (the projector's inputs, ``collab_inputs``).
    ``forward`` returns the summed loss over the answer tokens (labels != -100, next-token
    aligned), or, given ``candidates``, the (B, K) summed log-probabilities of every
    candidate's answer from one tree forward per batch (cprec_core.models.candidate_tree;
    the base model must use its ``cprec_tree`` attention)."""

    def __init__(self, peft_model: nn.Module, projector: Projector, item_table: torch.Tensor,
                 placeholder_id: int):
        super().__init__()
        self.model = peft_model
        self.projector = projector
        self.register_buffer("item_table", item_table, persistent=False)
        self.placeholder_id = placeholder_id

    def forward(self, input_ids=None, labels=None, attention_mask=None, slot_items=None,
                hybrid: bool = True, candidates: CandidateInputs | None = None,
                calibrated: bool = False, classic: torch.Tensor | None = None):
        """``calibrated`` (with ``candidates``): (summed, ranking, ranking divided by the
        learned temperature), the ranking scores being the summed log-likelihoods or, given
        ``classic`` (the (B, K) scores of the residual ranker's classic model),
        ``residual_scores``; inside the forward so that DDP and FSDP see the temperature and
        the gate used."""
        if candidates is not None:
            summed = self.candidate_logprobs(candidates, hybrid)
            if not calibrated:
                return summed
            ranking = (summed if classic is None
                       else residual_scores(summed, classic, self.projector.residual_weight))
            return summed, ranking, ranking / self.projector.log_temperature.exp().to(summed.dtype)
        base = self.model.get_base_model()
        embeds = hybrid_embeds(base, self.projector, self.item_table, input_ids, slot_items,
                               self.placeholder_id, hybrid)
        hidden = base.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != -100
        return chunked_cross_entropy_sum(hidden[:, :-1][keep],
                                         base.get_output_embeddings().weight, targets[keep])

    def candidate_logprobs(self, batch: CandidateInputs, hybrid: bool) -> torch.Tensor:
        base = self.model.get_base_model()
        embed = base.get_input_embeddings()
        vectors = (as_token_embeddings(embed, self.projector(self.item_table[batch.slot_items]))
                   if hybrid else None)
        prompts, used = [], 0
        for ids in batch.prompt_ids:
            e = embed(ids)
            if hybrid:
                n = int((ids == self.placeholder_id).sum())
                e = inject(e[None], ids[None], self.placeholder_id, vectors[used:used + n])[0]
                used += n
            prompts.append(e)
        prefixes = None
        if hybrid and batch.candidate_slots is not None:
            k = len(batch.continuations[0])
            prefixes = as_token_embeddings(
                embed, self.projector(self.item_table[batch.candidate_slots])).view(
                len(prompts), k, -1)
        tree = build_tree(prompts, batch.continuations, embed, prefixes)
        hidden = base.get_decoder()(**tree.forward_kwargs(), use_cache=False).last_hidden_state
        weight = base.get_output_embeddings().weight
        k = tree.first_targets.shape[1]
        if tree.prefixed:  # the prompt's last column predicts nothing scored
            first = hidden.new_zeros(len(prompts), k, dtype=torch.float32)
        else:
            last = hidden[torch.arange(len(prompts)), (tree.lengths - 1).to(hidden.device)]
            first = chunked_token_logprobs(last.repeat_interleave(k, 0), weight,
                                           tree.first_targets.reshape(-1)).view(-1, k)
        rest = chunked_token_logprobs(hidden[tree.rows, tree.cols], weight, tree.targets)
        return summed_logprobs(tree, first, rest)
