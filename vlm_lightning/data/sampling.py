"""Training order as one resumable stream of per-epoch permutations.

The order of training samples depends only on ``(seed, epoch)``. Where training is in that order
(``StreamPosition``: epoch and batches already handed to training) is saved in every checkpoint by
the datamodule and restored on ``fit --ckpt_path``, so a resumed run continues with the next unseen
batch: mid-epoch (preemption, ``every_n_train_steps``) as well as at epoch ends.

Lightning's own epoch counter is not used to pick the permutation: in Lightning 2.6, resuming with
``max_steps`` from a checkpoint written in ``on_train_epoch_end`` calls ``set_epoch(e + 1)`` instead
of ``set_epoch(e)`` (and, without validation, runs one batch of the next epoch inside the old one);
mid-epoch it restarts the epoch's permutation from its first batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from vlm_lightning.data.packing import fill_rows


class StreamPosition:
    """Epoch of the permutation being served and how many of its batches were handed to training."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batch = 0
        self.fresh = True  # neither restored nor used yet: adopt the epoch Lightning sets (old checkpoints)

    def state_dict(self) -> dict[str, int]:
        """Plain ints (checkpoint-safe under ``torch.load(weights_only=True)``)."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.epoch, self.batch, self.fresh = int(state["epoch"]), int(state["batch"]), False


class EpochShuffleSampler(DistributedSampler):
    """A permutation per epoch from ``seed + epoch``, sharded over ranks, starting at ``start_index``.

    It is a ``DistributedSampler`` so that Lightning does not wrap (and re-shuffle) it under DDP: it
    shards itself, padding the permutation with its first indices to a multiple of ``num_replicas``
    as ``DistributedSampler`` does. ``start_index`` skips this rank's first samples of the epoch.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: list[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        Sampler.__init__(self)
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
        self.lengths = lengths
        self.batch_size = batch_size
        self.dataset_size = num_samples
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_index = 0
        self.shuffle = True
        self.drop_last = False
        self.num_samples = math.ceil(num_samples / num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (the loader sets it from its ``StreamPosition``)."""
        self.epoch = epoch

    def indices(self, epoch: int) -> list[int]:
        """This rank's full index list of ``epoch``."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.dataset_size, generator=gen).tolist()
        if self.lengths is not None and self.batch_size > 1:
            order = length_grouped(order, self.lengths, self.batch_size * self.num_replicas, gen)
        if self.total_size > len(order):
            order += (order * math.ceil(self.total_size / max(1, len(order))))[: self.total_size - len(order)]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch)[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples


class PackedBatchSampler(EpochShuffleSampler):
    """Training batches of ``rows`` packed rows of at most ``budget`` tokens each, one batch per item.

    Each epoch's permutation (``seed + epoch``, as ``EpochShuffleSampler``) is filled into rows by
    ``fill_rows`` from the samples' token ``lengths``; consecutive ``rows`` rows make one batch, so every
    step holds about ``rows * budget`` real tokens whatever the samples' lengths. Batches are dealt to
    ranks in turn (batch ``k`` to rank ``k % num_replicas``), so the ranks' token budgets are equal; an
    epoch whose batch count does not divide by the ranks fills the last round with its first batches again
    as fillers (negative indices: samples marked ``FILLER``, whose labels are ignored), so every rank steps
    as often as the others and no sample trains twice (a filler adds no token to the step's token mean and
    zero gradients). An item is a list of rows (lists of sample indices): use it
    with ``batch_size=None`` over ``RowsView(dataset)``. ``start_index`` skips this rank's first batches.
    """

    def __init__(
        self,
        lengths: list[int],
        budget: int,
        rows: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(len(lengths), seed=seed, num_replicas=num_replicas, rank=rank)
        if rows < 1:
            raise ValueError(f"rows per batch must be >= 1, got {rows}")
        self.token_lengths = lengths
        self.budget = budget
        self.rows = rows
        self._epoch_batches: tuple[int, list[list[list[int]]]] | None = None

    def batches(self, epoch: int) -> list[list[list[int]]]:
        """This rank's batches of ``epoch`` (each a list of rows of sample indices)."""
        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=gen).tolist()
            rows = fill_rows(order, self.token_lengths, self.budget, gen=gen)
            batches = [rows[k : k + self.rows] for k in range(0, len(rows), self.rows)]
            per_rank = math.ceil(len(batches) / self.num_replicas)
            real = list(batches)
            while batches and len(batches) < per_rank * self.num_replicas:
                short = per_rank * self.num_replicas - len(batches)
                batches += [_as_fillers(batch) for batch in real[:short]]
            self._epoch_batches = (epoch, batches[self.rank :: self.num_replicas])
        return self._epoch_batches[1]

    def __iter__(self) -> Iterator[list[list[int]]]:  # type: ignore[override]
        return iter(self.batches(self.epoch)[self.start_index :])

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


def _as_fillers(batch: list[list[int]]) -> list[list[int]]:
    """``batch`` again as fillers: index ``-1 - i`` is sample ``i`` marked ``FILLER`` (no loss)."""
    return [[-1 - i if i >= 0 else i for i in row] for row in batch]


class RowsView(Dataset):
    """``dataset`` read a batch at a time: item ``rows`` (lists of indices) is those samples, row by row."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, rows: list[list[int]]) -> list[list[Any]]:  # type: ignore[override]
        return [[self.dataset[i] for i in row] for row in rows]


def length_grouped(
    order: list[int], lengths: list[int], group: int, gen: torch.Generator, window_groups: int = 50
) -> list[int]:
    """Reorder a permutation so that each run of ``group`` indices has similar lengths.

    Within windows of ``window_groups * group`` consecutive indices (randomness kept across windows)
    samples are sorted by length and cut into groups; full groups are then shuffled, a partial one
    goes last. With ``group = batch_size * world_size`` and strided sharding, the batches of one
    optimizer step have similar lengths on every rank: less padding and no rank waiting for another.
    """
    window = group * window_groups
    groups: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        groups.extend(chunk[k : k + group] for k in range(0, len(chunk), group))
    full = [g for g in groups if len(g) == group]
    partial = [i for g in groups if len(g) < group for i in g]
    shuffled = [full[k] for k in torch.randperm(len(full), generator=gen).tolist()]
    return [i for g in shuffled for i in g] + partial


class StreamDataLoader(DataLoader):
    """A training ``DataLoader`` that serves the stream at ``position`` and advances it per batch.

    Each iterator continues the current epoch where the last one stopped (a finished epoch moves on to
    the next permutation), so how often Lightning re-creates iterators never changes the data order.
    """

    def __init__(self, *args: Any, position: StreamPosition | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position if position is not None else StreamPosition()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._stream()

    # Lightning's resumable-loader protocol: with it, resuming mid-epoch is known to be exact (no
    # "your dataloader is not resumable" warning). The datamodule's checkpoint state holds the same position.
    def state_dict(self) -> dict[str, int]:
        """The stream position (epoch and batch within it)."""
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved stream position."""
        self.position.load_state_dict(state)

    def _stream(self) -> Iterator[Any]:
        pos, sampler = self.position, self.sampler
        if not isinstance(sampler, EpochShuffleSampler):
            yield from super().__iter__()
            return
        if pos.fresh:
            pos.epoch, pos.batch, pos.fresh = sampler.epoch, 0, False
        sampler.set_epoch(pos.epoch)
        if pos.batch >= len(self):  # the epoch's batch count: packed epochs differ from one another
            pos.epoch, pos.batch = pos.epoch + 1, 0
            sampler.set_epoch(pos.epoch)
        sampler.start_index = pos.batch * (self.batch_size or 1)
        for batch in super().__iter__():
            pos.batch += 1
            yield batch


#: ``train_layout`` key of the epoch's batch count (a position there is an epoch boundary, not compared)
EPOCH_BATCHES = "batches per epoch"


def layout_change(saved: dict[str, Any] | None, now: dict[str, Any], position: dict[str, Any]) -> str | None:
    """Why a saved stream ``position`` cannot continue under the ``now`` batch layout, or None.

    A position mid-epoch counts batches of the checkpoint's layout (batch size, packing, row budget, seed,
    training set, processes): in another layout it would repeat or skip samples of that epoch. At an epoch
    boundary (no batch served yet, or all of them) the next epoch starts afresh in the new layout.
    """
    batch = int(position.get("batch", 0))
    if not saved or batch == 0 or batch >= (saved.get(EPOCH_BATCHES) or float("inf")):
        return None
    changed = [
        f"{key} {saved[key]} -> {now[key]}"
        for key in saved
        if key != EPOCH_BATCHES
        and saved[key] is not None
        and now.get(key) is not None
        and saved[key] != now[key]
    ]
    if not changed:
        return None
    return (
        f"the checkpoint stopped {batch} batches into an epoch with other data settings ({'; '.join(changed)}): "
        "its position would repeat or skip samples. Resume with the checkpoint's settings, or start a new fit "
        "without --ckpt_path"
    )


#: ``meta`` key of an evaluation filler: a repeated sample that keeps sharded ranks in step, never scored
FILLER = "filler"


class EvenShardSampler(DistributedSampler):
    """Each rank's strided share of an evaluation set, padded with fillers to the same number of samples.

    Sharded models (FSDP) gather weights collectively in every forward, so every rank must run the same
    number of evaluation batches. A filler is a negative index ``-1 - i``: ``RecordDataset`` returns sample
    ``i`` marked ``meta["filler"]``, its labels are ignored and its outputs dropped, so every real sample
    is still counted exactly once.
    """

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        # a DistributedSampler, so Lightning does not shard it a second time
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, size, num_replicas))
        per_rank = -(-size // num_replicas)
        self.indices += [-1 - (i % max(size, 1)) for i in range(per_rank - len(self.indices))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
