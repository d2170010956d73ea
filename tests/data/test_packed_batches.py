"""Token-budget training batches (``data.packing``): rows filled to a budget, equal shares per rank, resumable."""

from __future__ import annotations

import random

import pytest
import torch

from vlm_lightning.data.packing import fill_rows, pack_rows
from vlm_lightning.data.sampling import PackedBatchSampler, RowsView, StreamDataLoader, StreamPosition


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 300) for _ in range(n)]


def test_fill_rows_keeps_every_sample_once_within_the_budget() -> None:
    lengths = [300, 120, 90, 250, 60, 200, 30, 180]
    rows = fill_rows(list(range(8)), lengths, budget=400)
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert all(sum(lengths[i] for i in row) <= 400 for row in rows)
    # first-fit decreasing: 300+90, 250+120+30, 200+180 ... fewer rows than cutting in order
    assert len(rows) < len(pack_rows(lengths, 400))


def test_fill_rows_refuses_a_sample_longer_than_the_budget() -> None:
    with pytest.raises(ValueError, match="sample 1 has 500 tokens, more than the row budget 400"):
        fill_rows([0, 1], [10, 500], budget=400)


def test_rows_are_well_filled_on_random_lengths() -> None:
    lengths = _lengths(2000)
    rows = fill_rows(list(range(2000)), lengths, budget=2048, gen=torch.Generator().manual_seed(0))
    fill = sum(lengths) / (len(rows) * 2048)
    assert fill > 0.95, fill


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_once_per_epoch_and_equal_batches_per_rank(world: int) -> None:
    lengths = _lengths(101, seed=world)
    samplers = [
        PackedBatchSampler(lengths, 600, rows=2, seed=5, num_replicas=world, rank=r) for r in range(world)
    ]
    shares = [list(s) for s in samplers]
    assert len({len(share) for share in shares}) == 1  # every rank steps as often as the others
    seen = [i for share in shares for batch in share for row in batch for i in row]
    assert sorted(i for i in seen if i >= 0) == list(range(101))  # every sample exactly once
    # an uneven batch count fills the last round with whole first batches as fillers (-1 - i: no loss)
    fillers = [-1 - i for i in seen if i < 0]
    assert len(fillers) <= (world - 1) * 2 * (600 // 20) and set(fillers) <= set(range(101))
    real_batches = sum(all(i >= 0 for row in b for i in row) for share in shares for b in share)
    assert bool(fillers) == (real_batches % world != 0)
    for share in shares:
        for batch in share:
            assert 1 <= len(batch) <= 2
            assert all(sum(lengths[i if i >= 0 else -1 - i] for i in row) <= 600 for row in batch)
            assert all(i >= 0 for row in batch for i in row) or all(i < 0 for row in batch for i in row)


def test_order_depends_on_seed_and_epoch_only() -> None:
    lengths = _lengths(60)
    a = PackedBatchSampler(lengths, 500, rows=2, seed=1)
    b = PackedBatchSampler(lengths, 500, rows=2, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(PackedBatchSampler(lengths, 500, rows=2, seed=2)) != list(a)


def test_resumed_stream_continues_with_the_next_unseen_batch() -> None:
    lengths = _lengths(40)
    data = list(range(40))

    def loader(position: StreamPosition) -> StreamDataLoader:
        sampler = PackedBatchSampler(lengths, 400, rows=2, seed=3)
        return StreamDataLoader(RowsView(data), batch_size=None, sampler=sampler, collate_fn=lambda rows: rows,
                                position=position)  # fmt: skip

    first_epoch = list(loader(StreamPosition()))
    again = loader(StreamPosition())
    it = iter(again)
    head = [next(it), next(it)]
    saved = again.state_dict()
    resumed_position = StreamPosition()
    resumed_position.load_state_dict(saved)
    rest = list(loader(resumed_position))
    assert head + rest == first_epoch
    assert [[i for row in b for i in row] for b in first_epoch] == [
        [data[i] for row in b for i in row] for b in PackedBatchSampler(lengths, 400, rows=2, seed=3)
    ]


def test_a_mid_epoch_position_in_another_layout_is_refused() -> None:
    from vlm_lightning.data.sampling import EPOCH_BATCHES, layout_change

    saved = {"data.batch_size": 2, "data.packing": False, "processes": 1, EPOCH_BATCHES: 10}
    now = {"data.batch_size": 4, "data.packing": True, "processes": 1, EPOCH_BATCHES: 5}
    message = layout_change(saved, now, {"epoch": 0, "batch": 3})
    assert message and "data.batch_size 2 -> 4" in message and "data.packing False -> True" in message
    assert "3 batches into an epoch" in message and "processes" not in message
    assert layout_change(saved, dict(saved), {"epoch": 0, "batch": 3}) is None  # same layout: continue
    assert layout_change(saved, now, {"epoch": 1, "batch": 0}) is None  # epoch boundary: a fresh epoch
    assert layout_change(saved, now, {"epoch": 0, "batch": 10}) is None  # a finished epoch: the same
    assert layout_change(None, now, {"epoch": 0, "batch": 3}) is None  # older checkpoints: not known


def test_the_datamodule_refuses_to_resume_mid_epoch_with_another_batch_size() -> None:
    from vlm_lightning.data.datamodule import DocumentDataModule
    from vlm_lightning.errors import SettingError

    saved = DocumentDataModule(train="t.jsonl", batch_size=2)
    saved.train_position.batch = 3
    state = saved.state_dict()
    with pytest.raises(SettingError, match=r"data.batch_size 2 -> 4.*Resume with the checkpoint's settings"):
        DocumentDataModule(train="t.jsonl", batch_size=4).load_state_dict(state)
    same = DocumentDataModule(train="t.jsonl", batch_size=2)
    same.load_state_dict(state)
    assert same.train_position.batch == 3


def test_evaluation_from_a_mid_epoch_checkpoint_may_use_another_batch_size() -> None:
    from types import SimpleNamespace

    from vlm_lightning.data.datamodule import DocumentDataModule

    saved = DocumentDataModule(train="t.jsonl", batch_size=2)
    saved.train_position.batch = 3
    for stage in ("validate", "test", "predict"):
        data = DocumentDataModule(train="t.jsonl", batch_size=8)
        data.trainer = SimpleNamespace(state=SimpleNamespace(fn=stage))
        data.load_state_dict(saved.state_dict())  # no refusal: evaluation restores no training position
        assert data.train_position.batch == 0
