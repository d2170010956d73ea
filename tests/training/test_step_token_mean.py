"""The training loss of an optimizer step is the mean over its labelled tokens, across accumulation and ranks."""

from __future__ import annotations

import pytest
import torch

from vlm_lightning.training.loss import LOSS_SUM_UNIT, StepTokenMean


def _token_losses(weight: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(tokens @ weight, targets, reduction="none")


def test_accumulated_and_ranked_micro_batches_give_the_token_mean_gradient() -> None:
    torch.manual_seed(0)
    weight = torch.randn(4, 3)
    # four micro-batches with different labelled-token counts: 2 ranks x 2 accumulation steps
    micro = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (1, 7, 3, 12)]
    world, accumulate = 2, 2

    # reference: one batch holding every labelled token, mean over all of them
    ref_w = weight.clone().requires_grad_()
    tokens = torch.cat([x for x, _ in micro])
    targets = torch.cat([t for _, t in micro])
    ref_loss = _token_losses(ref_w, tokens, targets).mean()
    ref_loss.backward()

    # as Lightning + DDP run it: each rank backpropagates value / accumulate, gradients averaged over ranks
    rank_grads, rank_totals = [], []
    for rank in range(world):
        w = weight.clone().requires_grad_()
        step = StepTokenMean()
        for x, t in micro[rank * accumulate : (rank + 1) * accumulate]:
            losses = _token_losses(w, x, t)
            value = step.add(losses.mean(), torch.tensor(len(t)), torch.tensor(0))
            (value / accumulate).backward()
        rank_grads.append(w.grad)
        rank_totals.append(step)
    summed = sum(s.totals for s in rank_totals)  # what the strategy's all-reduce returns on every rank
    averaged = sum(rank_grads) / world
    grads = [averaged.clone()]
    loss, _, n_tokens, factor = rank_totals[0].finish(grads, lambda _t, reduce_op: summed, world, accumulate)

    torch.testing.assert_close(grads[0], ref_w.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-7)
    assert int(n_tokens) == 23
    assert float(factor) == pytest.approx(world * accumulate * LOSS_SUM_UNIT / 23)
    # the old definition (each micro-batch's mean, averaged with equal weight) gives another gradient
    equal_weight = (
        sum(
            torch.autograd.grad(_token_losses(w := weight.clone().requires_grad_(), x, t).mean(), w)[0]
            for x, t in micro
        )
        / 4
    )
    assert not torch.allclose(equal_weight, ref_w.grad, atol=1e-3)


def test_a_step_without_micro_batches_changes_nothing() -> None:
    grads = [torch.ones(2)]
    assert StepTokenMean().finish(grads, lambda t, reduce_op: t, 1, 1) is None
    assert torch.equal(grads[0], torch.ones(2))
