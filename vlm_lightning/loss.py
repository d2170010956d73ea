"""Causal-LM loss computed only at labelled positions (the lm_head never runs on prompt or image tokens)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t whose next token t+1 is labelled in at least one row of the batch."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor,
    chunk_rows: int = 4096,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over labelled tokens; also labelled-token count and correct count.

    Logits are computed only at ``labelled_positions`` (``logits_to_keep`` with an index tensor) and
    the cross-entropy runs in float32 over row chunks, so the full ``(batch, length, vocab)`` logits are
    never built. Equal to the HF loss (mean over labelled tokens) up to float rounding.

    ``keep``: ``labelled_positions(labels)`` computed before the batch moved to the GPU (the trainer does
    so on the CPU copy); computing it here from GPU labels is a host sync (``nonzero``) that makes the
    host wait for the previous step's kernels before it can launch this step's.
    """
    if keep is None:
        keep = labelled_positions(labels)
    keep = keep.to(labels.device, non_blocking=True)
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
