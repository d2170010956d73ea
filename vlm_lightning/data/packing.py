"""Padding-free packed training rows: several samples (with their images) per row, each attending only to itself.

Pure functions on encoded samples (no model): ``fill_rows`` fills rows of a token budget from the training
order (the sampler's batches), ``pack_rows`` groups one batch's sample indices into rows that fit a token
budget, keeping the samples' order (so the images, processed in that order, meet their placeholder tokens in
the row-major order the models scatter image features in); ``packed_tensors`` lays the rows out as
``input_ids`` / ``labels`` / per-token extras with no attention mask, and returns each row's segment lengths.

The model keeps samples apart through positions that restart at 0 for every sample: transformers builds a
block-diagonal causal mask from such ``position_ids`` when no attention mask is given (``masking_utils.
find_packed_sequence_indices``), or sequence boundaries for varlen attention kernels. The positions
themselves are family-specific (1-D text positions, or Qwen's 3-D M-RoPE index) and are built from the
segments by ``models.packed_positions`` on the CPU copy of each batch. Labels never cross a boundary: a
sample's first token is a prompt token (label -100), so the previous sample's last position predicts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def pack_rows(lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """Sample indices per row, in order: a row is closed when the next sample would pass ``budget`` tokens.

    ``budget=None`` puts every sample into one row. A sample longer than the budget is an error (the
    length check refuses such settings before training).
    """
    rows: list[list[int]] = []
    used = 0
    for index, length in enumerate(lengths):
        if budget is not None and length > budget:
            raise ValueError(f"sample {index} has {length} tokens, more than the row budget {budget}")
        if rows and (budget is None or used + length <= budget):
            rows[-1].append(index)
            used += length
        else:
            rows.append([index])
            used = length
    return rows


def fill_rows(
    order: Sequence[int],
    lengths: Sequence[int],
    budget: int,
    window: int = 512,
    gen: torch.Generator | None = None,
) -> list[list[int]]:
    """Rows of sample indices that fill ``budget`` tokens: first-fit decreasing within windows of ``order``.

    Each window of ``window`` consecutive indices (the randomness of ``order`` kept across windows) is
    sorted by length, longest first, and each sample goes into the first row of the window with room
    (a new row when none has). The window's rows are then shuffled with ``gen`` (when given), so long
    and short rows mix. Fuller rows than ``pack_rows`` on a random order: fewer rows, less padding.
    """
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        window_rows: list[list[int]] = []
        room: list[int] = []
        for index in chunk:
            if lengths[index] > budget:
                raise ValueError(
                    f"sample {index} has {lengths[index]} tokens, more than the row budget {budget}"
                )
            slot = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
            if slot is None:
                window_rows.append([index])
                room.append(budget - lengths[index])
            else:
                window_rows[slot].append(index)
                room[slot] -= lengths[index]
        if gen is not None:
            window_rows = [window_rows[k] for k in torch.randperm(len(window_rows), generator=gen).tolist()]
        rows.extend(window_rows)
    return rows


def packed_tensors(
    samples: Sequence[Any],
    rows: Sequence[Sequence[int]],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[list[int]]]:
    """``(inputs, labels, segments)`` of packed rows.

    ``samples`` have ``input_ids``, ``labels`` and ``extras`` (per-token lists, e.g. ``mm_token_type_ids``).
    Rows are right-padded to the longest (rounded up to ``pad_to_multiple_of``); the padding of a row is one
    more segment (labels -100) so that it, too, attends only to itself. ``segments[r]`` are the lengths of
    row ``r``'s samples, then its padding if any.
    """
    widths = [sum(len(samples[i].input_ids) for i in row) for row in rows]
    width = max(widths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    extra_keys = list(samples[rows[0][0]].extras) if rows and rows[0] else []
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    extras = {k: torch.zeros((len(rows), width), dtype=torch.long) for k in extra_keys}
    segments: list[list[int]] = []
    for r, row in enumerate(rows):
        start, lengths = 0, []
        for i in row:
            sample = samples[i]
            n = len(sample.input_ids)
            input_ids[r, start : start + n] = torch.tensor(sample.input_ids)
            labels[r, start : start + n] = torch.tensor(sample.labels)
            for k in extra_keys:
                extras[k][r, start : start + n] = torch.tensor(sample.extras[k])
            start += n
            lengths.append(n)
        if start < width:
            lengths.append(width - start)
        segments.append(lengths)
    return {"input_ids": input_ids, **extras}, labels, segments


def segment_positions(segments: Sequence[Sequence[int]]) -> torch.Tensor:
    """1-D positions restarting at 0 for every segment: ``[[0, 1, 2, 0, 1, ...], ...]`` (rows, width)."""
    rows = [torch.cat([torch.arange(n) for n in row]) for row in segments]
    return torch.stack(rows).long()


def segment_index(segments: Sequence[Sequence[int]]) -> torch.Tensor:
    """Each token's segment number in its row: ``[[0, 0, 0, 1, 1, 2, ...], ...]`` (int32, rows x width)."""
    rows = [torch.cat([torch.full((n,), k) for k, n in enumerate(row)]) for row in segments]
    return torch.stack(rows).to(torch.int32)


__all__ = ["IGNORE_INDEX", "fill_rows", "pack_rows", "packed_tensors", "segment_index", "segment_positions"]
