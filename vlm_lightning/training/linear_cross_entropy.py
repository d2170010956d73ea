"""Cross-entropy of a frozen output head, computed in row chunks with the input gradient made on the way.

``lm_head`` followed by a float32 cross-entropy keeps a ``(rows, vocab)`` logits tensor, its float32 copy
and the softmax for backward: at 1,600 labelled tokens and a 65k vocabulary that is over 1 GiB, often the
peak of a LoRA step. When the head is frozen (LoRA, QLoRA) the only gradient it passes back is
``(softmax - onehot) @ W``, so ``linear_cross_entropy`` computes it chunk by chunk in the forward and keeps
only that ``(rows, hidden)`` result: no chunk's logits outlive the chunk. The arithmetic is the HF path's
(the head's matmul in the autocast dtype, softmax in float32, the logit gradient rounded to the logits'
dtype before the matmul back), so losses and gradients agree within rounding (tests compare every family).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T + bias``; saves only d(sum)/d(hidden)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk_rows):
            stop = start + chunk_rows
            tgt = targets[start:stop]
            valid = tgt != IGNORE_INDEX
            safe = tgt.clamp(min=0).unsqueeze(1)
            logits = F.linear(hidden[start:stop], weight, bias)  # the autocast dtype, as lm_head gives
            scores = logits.float()
            lse = torch.logsumexp(scores, dim=-1)
            picked = scores.gather(1, safe).squeeze(1)
            total += ((lse - picked) * valid).sum()
            correct += ((scores.argmax(-1) == tgt) & valid).sum()
            if grad is None:
                continue
            # d(sum of losses)/d(logits) = softmax - onehot on valid rows, 0 on ignored rows (in place)
            dlogits = scores.sub_(lse.unsqueeze(1)).exp_()
            dlogits.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=dlogits.dtype))
            dlogits.mul_(valid.unsqueeze(1))
            dlogits = dlogits.to(logits.dtype)
            grad[start:stop] = torch.matmul(dlogits, weight)  # autocast casts as for lm_head's backward
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, grad_correct: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        grad_hidden = None if grad is None else grad * grad_total.to(grad.dtype)
        return grad_hidden, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of ``hidden @ weight.T (+ bias)`` and the count of correct argmaxes.

    ``hidden``: ``(rows, hidden_size)``; ``targets``: ``(rows,)`` with ``-100`` for rows that count
    nothing. ``weight`` / ``bias`` must not require gradients (a frozen head). Rows are processed
    ``chunk_elements // vocab`` at a time (16M float32 logits, 64 MiB, by default: 256 rows at a 65k vocabulary).
    A chunk's logits, their float32 copy and the softmax live at once, so the chunk bounds that peak: with
    activation recomputation on LFM2-VL-1.6B the step's peak was here at 256 MiB chunks (0.75 GiB of them live).
    """
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("linear_cross_entropy needs a frozen head (its weight gradient is not computed)")
    chunk_rows = max(1, chunk_elements // weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows)
