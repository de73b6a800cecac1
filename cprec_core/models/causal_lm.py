"""A causal LM whose forward returns its own loss on packed blocks (nanoGPT's habit: the
training loop never sees the loss formula).

The loss is computed only at positions with a target, chunk by chunk, and the logits are
recomputed in backward instead of stored: for a 49k vocabulary the full fp32 logits of one
micro-batch would take most of the step's memory, and their softmax much of its time.
"""

from __future__ import annotations

import torch
from torch import nn

from cprec_core.prompts import IGNORE

CE_CHUNK = 1024


class _ChunkedCrossEntropy(torch.autograd.Function):
    """sum_i [logsumexp(h_i W^T) - (h_i W^T)[y_i]], logits never materialised whole."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        lses = []
        for s in range(0, hidden.shape[0], chunk):
            logits = (hidden[s:s + chunk] @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, targets[s:s + chunk, None]).squeeze(1)).sum()
            lses.append(lse)
        ctx.save_for_backward(hidden, weight, targets, torch.cat(lses) if lses else total[None])
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse = ctx.saved_tensors
        return (*_head_backward(hidden, weight, targets, lse, lambda s, e: grad, ctx.chunk,
                                ctx.needs_input_grad[1]), None, None)


def _head_backward(hidden, weight, targets, lse, scale, chunk: int, weight_grad: bool):
    """Gradients of sum_i scale_i * CE_i through the LM head, chunk by chunk: the logits are
    recomputed, d CE_i / d logits_i = softmax_i - onehot(y_i). ``scale(start, end)``: the
    scalar or (rows, 1) factor of those rows."""
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros_like(weight) if weight_grad else None
    rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        h = hidden[s:s + chunk]
        probs = (h @ weight.t()).float().sub_(lse[s:s + chunk, None]).exp_()
        probs[rows[: h.shape[0]], targets[s:s + chunk]] -= 1.0
        g = probs.mul_(scale(s, s + chunk)).to(hidden.dtype)
        grad_hidden[s:s + chunk] = g @ weight
        if grad_weight is not None:
            grad_weight += g.t() @ h
    return grad_hidden, grad_weight


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """log p(y_i | h_i) per row, fp32 logits chunk by chunk, recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        out, lses = [], []
        for s in range(0, hidden.shape[0], chunk):
            logits = (hidden[s:s + chunk] @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            out.append(logits.gather(1, targets[s:s + chunk, None]).squeeze(1) - lse)
            lses.append(lse)
        ctx.save_for_backward(hidden, weight, targets, torch.cat(lses))
        ctx.chunk = chunk
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse = ctx.saved_tensors
        # log p_i = -CE_i: row i's factor is -grad_i
        neg = grad.float().neg()[:, None]
        return (*_head_backward(hidden, weight, targets, lse, lambda s, e: neg[s:e], ctx.chunk,
                                ctx.needs_input_grad[1]), None, None)


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           chunk: int = CE_CHUNK) -> torch.Tensor:
    """(N,) log-probability of ``targets[i]`` after ``hidden[i]``, differentiable, without
    ever holding the (N, vocabulary) logits whole."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    return _ChunkedTokenLogprobs.apply(hidden, weight, targets, chunk)


def chunked_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor,
                              targets: torch.Tensor, chunk: int = CE_CHUNK) -> torch.Tensor:
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, chunk)


class PackedCausalLM(nn.Module):
    """Wraps a (peft) causal LM: ``forward(input_ids, position_ids, targets)`` returns the
    summed next-token loss over positions whose target is not -100, and their number."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, targets):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = base.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                    use_cache=False).last_hidden_state
        keep = targets != IGNORE
        weight = base.get_output_embeddings().weight
        loss = chunked_cross_entropy_sum(hidden[keep], weight, targets[keep])
        return loss, keep.sum()
