"""Dataloader construction: the sampler a split gets (packed, shuffled, sharded or unrepeated) and the loader."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from vlm_lightning.data.dataset import RecordDataset
from vlm_lightning.data.sampling import (
    EpochShuffleSampler,
    EvenShardSampler,
    PackedBatchSampler,
    RowsView,
    StreamDataLoader,
    StreamPosition,
)
from vlm_lightning.distributed import forward_is_collective
from vlm_lightning.errors import SettingError

log = logging.getLogger(__name__)

#: most dataloader workers a process gets by default (image decoding + the processor keep up with a step)
DEFAULT_MAX_WORKERS = 8


def workers_for(num_workers: int | None, trainer: Any = None) -> int:
    """``data.num_workers`` with ``None`` resolved: on CUDA, the CPUs this process may use shared by the
    processes of its node, at most ``DEFAULT_MAX_WORKERS`` (0 workers would decode images and run the
    processor between training steps); on the CPU 0 (workers would compete with training for the cores)."""
    if num_workers is not None:
        return num_workers
    if not torch.cuda.is_available():
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_node = max(1, getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1
    return max(1, min(DEFAULT_MAX_WORKERS, cpus // per_node - 1))


def _batches(n: int) -> str:
    return f"{n} training batch" + ("" if n == 1 else "es")


def _run_batches(trainer: Any, per_epoch: int) -> int | None:
    """Training batches the whole run draws (``max_steps`` x accumulation, ``max_epochs`` x epoch), or None
    when neither bounds it."""
    bounds = []
    max_steps = getattr(trainer, "max_steps", -1)
    if isinstance(max_steps, int) and max_steps > 0:
        bounds.append(max_steps * max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1)))
    max_epochs = getattr(trainer, "max_epochs", None)
    if isinstance(max_epochs, int) and max_epochs > 0:
        bounds.append(max_epochs * per_epoch)
    return min(bounds) if bounds else None


def check_validation_interval(trainer: Any, batches: int) -> None:
    """Refuse an integer ``trainer.val_check_interval`` that validation would never reach, with the numbers and
    what to set: beyond the training batches of an epoch (Lightning raises the same as a traceback; packing
    makes epochs shorter), or, counted across epochs, beyond the batches of the whole run (Lightning would
    train without validating, no ``best.ckpt``, and say nothing)."""
    interval = getattr(trainer, "val_check_interval", None)
    if not isinstance(interval, int) or isinstance(interval, bool) or not trainer.limit_val_batches:
        return
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
    if interval % accumulate:
        log.warning(
            "trainer.val_check_interval %d counts batches, not optimizer steps: with accumulate_grad_batches %d "
            "validation runs inside an accumulation window; set a multiple of %d (e.g. %d)",
            interval, accumulate, accumulate, max(accumulate, interval - interval % accumulate),
        )  # fmt: skip
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if trainer.check_val_every_n_epoch is None:
        total = _run_batches(trainer, batches)
        if total is not None and interval > total:
            raise SettingError(
                f"trainer.val_check_interval {interval} (counted across epochs) is more than the {_batches(total)} "
                f"of this whole run, so validation would never run: set --trainer.val_check_interval {total} or "
                "less, or train longer (trainer.max_steps / trainer.max_epochs)"
            )
        return
    if interval > batches:
        raise SettingError(
            f"trainer.val_check_interval {interval} is more than the {_batches(batches)} of an epoch: "
            f"set --trainer.val_check_interval {batches} or less, a fraction of an epoch (e.g. 0.5), or "
            "--trainer.check_val_every_n_epoch null to count batches across epochs"
        )


class LoaderPlan(NamedTuple):
    """What a split's loader iterates: the dataset (or rows view), its sampler and batch size, and whether
    it streams (resumable training order)."""

    dataset: Dataset
    sampler: Sampler | None
    batch_size: int | None
    streams: bool


def plan_loader(
    dataset: RecordDataset,
    *,
    shuffle: bool,
    batch_size: int,
    rows: int,
    trainer: Any,
    packing: bool,
    group_by_length: bool,
    row_budget: int,
    seed: int,
) -> LoaderPlan:
    """Choose the sampler: packed rows or a (length-grouped) resumable shuffle for training; for
    evaluation, even shards under sharded weights, else every sample exactly once across ranks."""
    sampler: Sampler | None = None
    if shuffle and packing:
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if dataset.lengths is None:
            raise SettingError("data.packing needs the sample lengths: keep data.check_lengths on")
        sampler = PackedBatchSampler(
            dataset.lengths, row_budget, rows=rows, seed=seed, num_replicas=world, rank=rank
        )
        return LoaderPlan(RowsView(dataset), sampler, None, True)  # an item is a whole batch of rows
    if shuffle:
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        lengths = None
        if group_by_length:
            if dataset.lengths is None:
                raise SettingError(
                    "data.group_by_length needs the sample lengths: keep data.check_lengths on"
                )
            lengths = dataset.lengths
        sampler = EpochShuffleSampler(
            len(dataset), seed=seed, num_replicas=world, rank=rank, lengths=lengths, batch_size=rows
        )
        return LoaderPlan(dataset, sampler, batch_size, True)
    if trainer is not None and trainer.world_size > 1 and forward_is_collective(trainer.strategy):
        # sharded weights: every rank runs the same number of batches (fillers pad the shorter shares)
        sampler = EvenShardSampler(len(dataset), trainer.world_size, trainer.global_rank)
    elif trainer is not None and trainer.world_size > 1:
        # every sample exactly once across ranks: no padding duplicates in metrics or predictions
        sampler = UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
    return LoaderPlan(dataset, sampler, batch_size, False)


def build_loader(
    plan: LoaderPlan,
    collate_fn: Callable[[Any], Any],
    num_workers: int,
    seed: int,
    position: StreamPosition,
) -> DataLoader:
    """The dataloader of ``plan`` (a ``StreamDataLoader`` at ``position`` when it streams)."""
    loader_cls: type[DataLoader] = StreamDataLoader if plan.streams else DataLoader
    extra: dict[str, Any] = {"position": position} if plan.streams else {}
    return loader_cls(
        plan.dataset,
        batch_size=plan.batch_size,
        sampler=plan.sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # worker seeds come from this generator, not the global RNG: creating an iterator (Lightning
        # does so a different number of times in resumed runs) must not shift the dropout RNG stream
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
