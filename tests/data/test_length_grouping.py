"""Length-grouped training order: a permutation, similar lengths per step on every rank, deterministic."""

from __future__ import annotations

import random

import pytest
import torch

from vlm_lightning.data.sampling import EpochShuffleSampler, length_grouped


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(100, 900) for _ in range(n)]


def _padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_is_a_permutation_with_less_padding() -> None:
    lengths = _lengths(1000)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    grouped = length_grouped(order, lengths, 8, torch.Generator().manual_seed(2))
    assert sorted(grouped) == list(range(1000))
    batches = lambda o: [o[k : k + 8] for k in range(0, len(o), 8)]  # noqa: E731
    assert _padding(batches(grouped), lengths) < 0.2 * _padding(batches(order), lengths)


def test_partial_group_goes_last() -> None:
    lengths = [5, 1, 9, 3, 7, 2, 8]
    grouped = length_grouped(list(range(7)), lengths, 3, torch.Generator().manual_seed(0), window_groups=10)
    assert sorted(grouped) == list(range(7))
    # sorted by length: 2 (9), 6 (8), 4 (7) | 0 (5), 3 (3), 5 (2) | 1 (1): two full groups, shuffled
    assert sorted([sorted(grouped[0:3]), sorted(grouped[3:6])]) == [[0, 3, 5], [2, 4, 6]]
    assert grouped[6:] == [1]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_step_draws_similar_lengths_on_every_rank(world: int) -> None:
    n, batch = 640, 4
    lengths = _lengths(n, seed=world)
    samplers = [
        EpochShuffleSampler(n, seed=3, num_replicas=world, rank=r, lengths=lengths, batch_size=batch)
        for r in range(world)
    ]
    per_rank = [s.indices(0) for s in samplers]
    assert sorted(i for idx in per_rank for i in idx) == list(range(n))  # every sample once per epoch
    steps = len(per_rank[0]) // batch
    spreads, random_spreads = [], []
    plain = [EpochShuffleSampler(n, seed=3, num_replicas=world, rank=r).indices(0) for r in range(world)]
    for k in range(steps):
        step = [i for idx in per_rank for i in idx[k * batch : (k + 1) * batch]]
        spreads.append(max(lengths[i] for i in step) - min(lengths[i] for i in step))
        step = [i for idx in plain for i in idx[k * batch : (k + 1) * batch]]
        random_spreads.append(max(lengths[i] for i in step) - min(lengths[i] for i in step))
    assert sum(spreads) < 0.25 * sum(random_spreads)
    # deterministic per (seed, epoch), different across epochs
    assert samplers[0].indices(0) == per_rank[0] and samplers[0].indices(1) != per_rank[0]


def test_lengths_must_match_the_dataset() -> None:
    with pytest.raises(ValueError, match="3 lengths for 4 samples"):
        EpochShuffleSampler(4, lengths=[1, 2, 3], batch_size=2)


def test_length_to_fit_is_the_nearest_rank_percentile() -> None:
    from vlm_lightning.data.datamodule import length_to_fit

    lengths = list(range(1, 101))  # 1..100
    assert length_to_fit(lengths, 0.95) == 95 and length_to_fit(lengths, 1.0) == 100
    assert length_to_fit([7], 0.95) == 7 and length_to_fit([5, 3, 9], 0.5) == 5
