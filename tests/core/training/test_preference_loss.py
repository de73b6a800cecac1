"""The DPO and IPO losses equal TRL's DPOTrainer on the same inputs.

TRL computes the loss inside ``DPOTrainer._compute_loss`` from a model's per-token
log-probabilities; the test calls that method with a stand-in trainer and a stand-in model
that return given log-probabilities, and the stored reference log-probabilities (TRL's
``precompute_ref_log_probs``), so both implementations see exactly the same numbers.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from cprec_core.training.preference_loss import preference_loss

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


def _trl(per_token_logps, completion_mask, ref_chosen, ref_rejected, beta, loss_type):
    """TRL's loss and reward metrics for a batch [chosen..., rejected...]."""
    n, length = completion_mask.shape

    class Model(torch.nn.Module):
        def forward(self, **kwargs):
            zeros = torch.zeros(n, length - 1)
            return SimpleNamespace(log_probs=per_token_logps, entropy=zeros, mean_logits=zeros,
                                   is_top1=torch.zeros(n, length - 1, dtype=torch.bool))

    model = Model()
    trainer = SimpleNamespace(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, use_weighting=False, label_smoothing=0.0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(n, length, dtype=torch.long),
              "attention_mask": torch.ones(n, length, dtype=torch.long),
              "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = trl_dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_the_preference_loss_equals_trls(loss_type, beta):
    generator = torch.Generator().manual_seed(3)
    pairs, length = 6, 12
    # prompt of 4 tokens, answers of 3 to 7 tokens (chosen first, then rejected)
    completion_mask = torch.zeros(2 * pairs, length, dtype=torch.long)
    answer_tokens = torch.randint(3, 8, (2 * pairs,), generator=generator)
    for row, k in enumerate(answer_tokens.tolist()):
        completion_mask[row, 4:4 + k] = 1
    per_token = -torch.rand(2 * pairs, length - 1, generator=generator) * 3
    per_token = per_token * completion_mask[:, 1:]  # log-probabilities of answer tokens only
    summed = per_token.sum(1)
    ref = summed + torch.randn(2 * pairs, generator=generator)
    loss, metrics = _trl(per_token, completion_mask, ref[:pairs], ref[pairs:], beta, loss_type)

    ours = preference_loss(summed[:pairs], summed[pairs:], ref[:pairs], ref[pairs:], beta,
                           loss_type, answer_tokens[:pairs].float(), answer_tokens[pairs:].float())
    assert torch.allclose(ours.losses.mean(), loss, rtol=1e-6, atol=1e-7)
    assert ours.margin == pytest.approx(metrics["rewards/margins"][0], rel=1e-6)
    assert ours.accuracy == pytest.approx(metrics["rewards/accuracies"][0])
    assert float(ours.chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"][0], rel=1e-6)


def test_gradients_flow_to_the_policy_only():
    policy = torch.tensor([-3.0, -5.0], requires_grad=True)
    ref = torch.tensor([-4.0, -4.0])
    out = preference_loss(policy[:1], policy[1:], ref[:1], ref[1:], beta=0.1)
    out.losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # raise the chosen, lower the rejected
    assert out.accuracy == 1.0 and out.margin == pytest.approx(0.2)
    with pytest.raises(ValueError, match="token counts"):
        preference_loss(policy[:1], policy[1:], ref[:1], ref[1:], beta=0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="not one of"):
        preference_loss(policy[:1], policy[1:], ref[:1], ref[1:], beta=0.1, loss_type="kto")
