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
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler


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
        per_epoch = len(self)
        if pos.batch >= per_epoch:
            pos.epoch, pos.batch = pos.epoch + 1, 0
        sampler.set_epoch(pos.epoch)
        sampler.start_index = pos.batch * (self.batch_size or 1)
        for batch in super().__iter__():
            pos.batch += 1
            yield batch


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
