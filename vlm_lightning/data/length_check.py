"""The token-length check before training: every sample measured once (shared across ranks), too-long
samples and cut answers reported together, lengths cached and kept for length-aware batching."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vlm_lightning.data.cache import PreprocessCache, fingerprint
from vlm_lightning.data.collator import ChatCollator
from vlm_lightning.data.dataset import RecordDataset
from vlm_lightning.data.records import Record
from vlm_lightning.distributed import gather_lists
from vlm_lightning.errors import SettingError

log = logging.getLogger(__name__)


def all_ranks(flag: bool) -> bool:
    """``flag`` on every rank of an initialised process group (the flag itself in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    flags: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(flags, flag)
    return all(flags)


def merge_length_shares(
    n: int, shares: list[tuple[list[int], list[int], list[str]]]
) -> tuple[list[int], list[str]]:
    """Assemble per-rank (indices, lengths, problems) shares into the full length list (in sample order)
    and all problems (rank order); every index must be covered exactly once."""
    lengths: list[int | None] = [None] * n
    problems: list[str] = []
    for indices, share_lengths, share_problems in shares:
        if len(indices) != len(share_lengths):
            raise ValueError(f"length share has {len(indices)} indices but {len(share_lengths)} lengths")
        for i, length in zip(indices, share_lengths):
            if lengths[i] is not None:
                raise ValueError(f"sample {i} measured by two ranks")
            lengths[i] = length
        problems.extend(share_problems)
    missing = [i for i, length in enumerate(lengths) if length is None]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) measured by no rank, first {missing[:5]}")
    return [int(length) for length in lengths if length is not None], problems


def length_to_fit(lengths: list[int], share: float) -> int:
    """The smallest token limit that keeps at least ``share`` of these samples whole (nearest rank)."""
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def too_many_cut(cut: list[tuple[str, int, int]], lengths: list[int], hparams: Any) -> str | None:
    """The problem to report when ``max_length`` cuts more answers than ``max_cut_fraction`` allows."""
    n, fraction = len(lengths), hparams["max_cut_fraction"]
    if not cut or len(cut) <= fraction * n:
        return None
    # cut samples were measured at max_length: the longest len(cut) lengths are theirs
    full = sorted(lengths)[: n - len(cut)] + [length for _, length, _ in cut]
    shown = ", ".join(f"{rid} ({length} tokens)" for rid, length, _ in cut[:5])
    most, every = length_to_fit(full, 0.95), max(full)
    fits = (
        f"--data.max_length {every} keeps every answer whole"
        if most == every
        else f"--data.max_length {most} keeps 95% whole, {every} keeps all"
    )
    return (
        f"{len(cut)} of {n} training samples ({len(cut) / n:.0%}) are longer than data.max_length "
        f"{hparams['max_length']} and would lose the end of their answer and its end-of-turn token, so the "
        f"model would never learn to finish (e.g. {shown}). {fits}; or allow this with --data.max_cut_fraction "
        f"{math.ceil(100 * len(cut) / n) / 100:.2f}"
    )


def report_cut_answers(split: str, cut: list[tuple[str, int, int]]) -> None:
    """Warn which samples lose the tail of their answer to ``data.max_length``."""
    if not cut:
        return
    shown = ", ".join(f"{rid} ({length} -> {kept} tokens)" for rid, length, kept in cut[:10])
    more = f" and {len(cut) - 10} more" if len(cut) > 10 else ""
    log.warning(
        "data.%s: %d sample(s) longer than data.max_length lose the tail of their answer (left out of the loss): "
        "%s%s. Raise data.max_length to keep them whole.",
        split,
        len(cut),
        shown,
        more,
    )


def lengths_key(
    dataset: RecordDataset, hparams: Mapping[str, Any], image_settings: dict[str, Any], processor_name: str
) -> str:
    """The cache key of a split's token lengths: its samples, their image files and every setting that
    changes a length (the processor's config included)."""
    samples = [
        (r.id, r.messages, [str(i) for i in r.images], r.meta.get("augment_key")) for r in dataset.records
    ]
    sources = sorted({str(i) for r in dataset.records for i in r.images if isinstance(i, (str, Path))})
    settings = {k: hparams[k] for k in ("max_length", "image_max_tokens", "image_min_tokens", "mask")}
    return fingerprint(
        samples,
        [fingerprint(s) for s in sources],
        settings,
        image_settings,
        fingerprint(str(Path(processor_name) / "config.json")),
        processor_name,
    )


def measure_lengths(
    dataset: RecordDataset, collator: ChatCollator
) -> tuple[list[int], list[str], list[tuple[str, int, int]]]:
    """Token lengths (and too-long problems) of every sample, and this rank's cut answers; under an
    initialised process group each rank measures every world_size-th sample and the shares are gathered,
    so all ranks hold the same full list and startup work is divided by the number of ranks."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    indices = list(range(rank, len(dataset), world))
    lengths: list[int] = []
    problems: list[str] = []
    cut: list[tuple[str, int, int]] = []
    chunk = 16
    for start in range(0, len(indices), chunk):
        report = collator.lengths([dataset[i] for i in indices[start : start + chunk]])
        lengths.extend(report.tokens)
        problems.extend(report.problems)
        cut.extend(report.cut)
    if world == 1:
        return lengths, problems, cut
    shares: list[Any] = [None] * world
    torch.distributed.all_gather_object(shares, (indices, lengths, problems))
    return (*merge_length_shares(len(dataset), shares), cut)


def check_row_budget(lengths: list[int], records: list[Record], budget: int, packing: bool) -> None:
    """Refuse a packed-row budget (``data.max_tokens_per_row``) smaller than the longest sample."""
    if packing and lengths and max(lengths) > budget:
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        raise SettingError(
            f"data.max_tokens_per_row {budget} is smaller than sample '{records[longest].id}' "
            f"({records[longest].where}, {lengths[longest]} tokens): set --data.max_tokens_per_row "
            f"{max(lengths)} or more (unset: data.max_length)"
        )


def check_lengths(
    datasets: Mapping[str, RecordDataset],
    splits: Sequence[str],
    collator: Callable[[], ChatCollator],
    hparams: Mapping[str, Any],
    cache: PreprocessCache | None,
    key_of: Callable[[RecordDataset], str],
    row_budget: int,
) -> None:
    """Tokenize every sample of ``splits`` once (or reuse cached lengths) and keep the lengths on each
    dataset; report every sample that cannot fit, all together. ``collator`` is called only when a split
    is measured (building it loads the processor); ``key_of`` gives a split's cache key."""
    problems: list[str] = []
    for split in splits:
        dataset = datasets[split]
        key = key_of(dataset) if cache is not None else None
        cached = cache.get_json(key) if key else None
        if all_ranks(cached is not None):  # ranks must agree: a rank that measures waits for the others
            dataset.lengths = cached
            continue
        lengths, split_problems, rank_cut = measure_lengths(dataset, collator())
        problems.extend(split_problems)
        cut = gather_lists(rank_cut)
        if split == "train" and (too_many := too_many_cut(cut, lengths, hparams)):
            problems.append(too_many)
        else:
            report_cut_answers(split, cut)
        dataset.lengths = lengths
        if key and not problems:
            cache.put_json(key, lengths)
    train = datasets.get("train")
    if "train" in splits and train is not None and train.lengths:
        check_row_budget(train.lengths, train.records, row_budget, hparams["packing"])
    if problems:  # about a setting, not about rows of a file: one message per problem under it
        listed = "\n  ".join(str(p) for p in problems)
        raise SettingError(
            f"data.max_length {hparams['max_length']} is too small for the data:\n  {listed}\n"
            "No sample was cut silently: raise data.max_length or lower data.image_max_tokens."
        )
