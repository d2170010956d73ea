"""Causal-LM loss computed only at labelled positions (the lm_head never runs on prompt or image tokens), and
the training loss's definition: the mean over the labelled tokens of an optimizer step (``StepTokenMean``)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from vlm_lightning.patches.lm_head_bypass import head_bypassed
from vlm_lightning.training.linear_cross_entropy import linear_cross_entropy

IGNORE_INDEX = -100


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t whose next token t+1 is labelled in at least one row of the batch."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def labelled_rows(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Indices into the flattened ``(batch, len(keep))`` rows at ``keep`` whose next token is labelled."""
    return (labels[:, keep + 1] != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)


def fusable_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output head when the chunked ``linear_cross_entropy`` can stand in for it, else None.

    It must be a plain frozen ``nn.Linear`` holding its whole matrix (LoRA / QLoRA keep ``lm_head``
    frozen and unquantized) that runs without accelerate's device hooks, and the model must apply no
    transform after it (Gemma 2's ``final_logit_softcapping`` in PaliGemma 2 keeps the unfused path).
    """
    if _softcap(model) is not None:
        return None
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if type(head) is not torch.nn.Linear or hasattr(head, "_hf_hook"):
        return None
    weight, bias = head.weight, head.bias
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return None  # trained head (full fine-tuning): its weight gradient comes from autograd
    if type(weight.data) is not torch.Tensor or weight.shape != (head.out_features, head.in_features):
        return None  # sharded (FSDP / DTensor) or flattened
    return head


def _softcap(model: torch.nn.Module) -> float | None:
    """The text config's ``final_logit_softcapping`` (applied by the model to lm_head's output)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "final_logit_softcapping", None)


def causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor,
    chunk_rows: int = 4096,
    keep: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    head: torch.nn.Linear | None | Literal["auto"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over labelled tokens; also labelled-token count and correct count.

    Logits are computed only at ``labelled_positions`` (``logits_to_keep`` with an index tensor) and
    the cross-entropy runs in float32 over row chunks, so the full ``(batch, length, vocab)`` logits are
    never built. Equal to the HF loss (mean over labelled tokens) up to float rounding.

    With a frozen head (``head``: ``fusable_head(model)`` found once by the caller, ``"auto"`` to look
    it up here, None for the unfused loss), the head runs inside
    ``linear_cross_entropy``: only the labelled ``rows`` go through it and no ``(rows, vocab)`` tensor is
    kept for backward.

    ``keep`` / ``rows``: ``labelled_positions(labels)`` / ``labelled_rows(labels, keep)`` computed before
    the batch moved to the GPU (the trainer does so on the CPU copy); computing ``keep`` here from GPU
    labels is a host sync (``nonzero``) that makes the host wait for the previous step's kernels before
    it can launch this step's. Without ``rows`` every row at ``keep`` goes through the head.
    """
    if keep is None:
        keep = labelled_positions(labels)
    keep = keep.to(labels.device, non_blocking=True)
    if head == "auto":
        head = fusable_head(model)
    if head is not None:
        with head_bypassed(head):  # patches/lm_head_bypass.py
            out = model(**inputs, logits_to_keep=keep, use_cache=False)
        hidden = out.logits.reshape(-1, out.logits.shape[-1])  # hidden states at ``keep``
        targets = labels[:, keep + 1].reshape(-1)
        if rows is not None:
            rows = rows.to(labels.device, non_blocking=True)
            hidden, targets = hidden.index_select(0, rows), targets.index_select(0, rows)
        n_tokens = (targets != IGNORE_INDEX).sum()
        total, correct = linear_cross_entropy(hidden, head.weight, targets, head.bias)
        return total / n_tokens.clamp(min=1), n_tokens, correct
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    targets = labels[:, keep + 1].reshape(-1)
    n_tokens = (targets != IGNORE_INDEX).sum()
    total = logits.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, logits.shape[0], chunk_rows):
        part, tgt = logits[start : start + chunk_rows].float(), targets[start : start + chunk_rows]
        total = total + F.cross_entropy(part, tgt, ignore_index=IGNORE_INDEX, reduction="sum")
        with torch.no_grad():
            correct += ((part.argmax(-1) == tgt) & (tgt != IGNORE_INDEX)).sum()
    return total / n_tokens.clamp(min=1), n_tokens, correct


#: backpropagated value = the micro-batch's summed token loss / this constant (any constant gives the same
#: gradients after ``StepTokenMean.finish``; one near a micro-batch's token count keeps fp16 scaling in range)
LOSS_SUM_UNIT = 1024.0


class StepTotals(NamedTuple):
    """One optimizer step's values over all ranks (``StepTokenMean.finish``)."""

    loss: torch.Tensor  # the mean over the step's labelled tokens
    token_acc: torch.Tensor
    tokens: torch.Tensor  # labelled tokens
    grad_factor: torch.Tensor  # what the gradients were multiplied by


class StepTokenMean:
    """The training loss of an optimizer step: the mean over the labelled tokens of all its micro-batches on
    all ranks, packed or not (so a micro-batch or rank with more answer tokens weighs more).

    Each micro-batch backpropagates its summed token loss over ``LOSS_SUM_UNIT`` (``add``); before the
    optimizer step ``finish`` sums the step's loss and token counts over ranks (one all-reduce of three
    numbers, no host sync) and multiplies the gradients by ``world * accumulate * LOSS_SUM_UNIT / tokens``,
    which undoes Lightning's division by ``accumulate_grad_batches`` and the ranks' gradient average.
    """

    def __init__(self) -> None:
        self.totals: torch.Tensor | None = None  # (summed loss, labelled tokens, correct tokens)

    def add(self, mean_loss: torch.Tensor, n_tokens: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """Count a micro-batch; returns the value to backpropagate."""
        summed = mean_loss * n_tokens
        row = torch.stack([summed.detach().float(), n_tokens.float(), correct.float()])
        self.totals = row if self.totals is None else self.totals + row
        return summed / LOSS_SUM_UNIT

    def finish(
        self, grads: list[torch.Tensor], reduce: Any, world: int, accumulate: int
    ) -> StepTotals | None:
        """Rescale ``grads`` in place to the step's token mean; returns the step's values over all ranks,
        or None when no micro-batch was counted. ``reduce``: the strategy's ``reduce(tensor, reduce_op="sum")``."""
        if self.totals is None:
            return None
        totals, self.totals = reduce(self.totals, reduce_op="sum"), None
        tokens = totals[1].clamp(min=1)
        factor = world * accumulate * LOSS_SUM_UNIT / tokens
        scale_gradients(grads, factor)
        return StepTotals(totals[0] / tokens, totals[2] / tokens, totals[1], factor)


def scale_gradients(grads: list[torch.Tensor], factor: torch.Tensor) -> None:
    """``grads *= factor`` with one foreach kernel per device (sharded DTensor gradients: their local shard)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for grad in grads:
        local = grad.to_local() if isinstance(grad, DTensor) else grad
        by_device.setdefault(local.device, []).append(local)
    for device, tensors in by_device.items():
        torch._foreach_mul_(tensors, factor.to(device, torch.float32))
