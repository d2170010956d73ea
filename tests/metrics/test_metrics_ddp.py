"""Two CPU processes (gloo) on uneven shards give exactly the single-process metric values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from ddp_helpers import free_port, gloo_group

from vlm_lightning.metrics import METRICS

TEXT = (
    ["Hello world", "12%", "x ^ { 2 } + y", "abc", ""],
    [["hello world"], ["0.12", "twelve"], ["x ^ 2 + y", "x ^ { 2 } + y"], ["abd"], ["nothing"]],
)
_TARGETS = [
    {"store_name": "Rio", "date": "2024-01-02", "total": 12.5, "currency": "EUR", "items": [{"n": "a"}]},
    {
        "store_name": "Shop",
        "date": "2024-02-03",
        "total": 3,
        "currency": "USD",
        "items": [{"n": "b"}, {"n": "c"}],
    },
    {"store_name": "Deli", "date": "2024-03-04", "total": 7.25, "currency": "EUR", "items": []},
    {"store_name": "Bar", "date": "2024-04-05", "total": 1, "currency": "GBP", "items": [{"n": "d"}]},
    {"menu": [{"nm": "cake", "cnt": "2"}, {"nm": "juice", "cnt": "1"}]},
]
JSON = (
    [
        json.dumps(_TARGETS[0]),
        json.dumps({**_TARGETS[1], "total": "3.00", "items": []}),
        "not json",
        "```json\n" + json.dumps({**_TARGETS[3], "store_name": "bar "}) + "\n```",
        json.dumps({"menu": [{"nm": "cake", "cnt": "2"}]}),
    ],
    [[json.dumps(t, separators=(",", ":"))] for t in _TARGETS],
)
SHARDS = (slice(0, 3), slice(3, 5))  # uneven: 3 and 2 samples


def _data(name: str) -> tuple[list[str], list[list[str]]]:
    return JSON if name in ("json", "receipt", "tree") else TEXT


def _compute_all(shard: slice) -> dict[str, dict[str, float]]:
    results = {}
    for name, cls in METRICS.items():
        metric = cls()
        preds, refs = _data(name)
        metric.update(preds[shard], refs[shard])
        results[name] = {k: float(v) for k, v in metric.compute().items()}
    return results


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world_size, port):
        results = _compute_all(SHARDS[rank])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_sync_equals_single_process(tmp_path: Path) -> None:
    expected = _compute_all(slice(0, 5))
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == expected.keys()
        for name, values in expected.items():
            assert got[name] == pytest.approx(values, rel=1e-12, abs=1e-12), (rank, name)
    # every metric differs between a shard and the whole, so a missing sync would be caught
    for shard in SHARDS:
        alone = _compute_all(shard)
        assert all(alone[name] != values for name, values in expected.items())
