"""The length check split across DDP ranks: every rank ends with the single-process lengths and problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from ddp_helpers import free_port, gloo_group
from fixtures_data import write_receipt_dataset

from vlm_lightning.data.datamodule import DocumentDataModule, merge_length_shares


def test_merge_puts_each_share_back_in_sample_order() -> None:
    shares = [([0, 2, 4], [10, 12, 14], ["a too long"]), ([1, 3], [11, 13], [])]
    assert merge_length_shares(5, shares) == ([10, 11, 12, 13, 14], ["a too long"])


def test_merge_refuses_gaps_and_overlaps() -> None:
    with pytest.raises(ValueError, match="measured by no rank"):
        merge_length_shares(3, [([0], [5], []), ([2], [7], [])])
    with pytest.raises(ValueError, match="two ranks"):
        merge_length_shares(2, [([0, 1], [5, 6], []), ([1], [6], [])])


def _module(
    processor: str, data: dict[str, str], max_length: int, cache: str | None = None
) -> DocumentDataModule:
    return DocumentDataModule(
        train=data["train"],
        val=data["val"],
        processor_name=processor,
        max_length=max_length,
        image_max_tokens=16,
        cache_dir=cache,
    )


def _worker(rank: int, world: int, port: int, processor: str, data: dict[str, str], out: str) -> None:
    with gloo_group(rank, world, port):
        # rank 0 finds cached lengths, rank 1 (another node's cache folder) does not: both must measure
        module = _module(processor, data, max_length=400, cache=str(Path(out, f"cache{rank}")))
        measured: list[int] = []
        lengths_of = module.collator.lengths
        module.collator.lengths = lambda items: measured.append(len(items)) or lengths_of(items)
        module.setup("fit")
        lengths = {split: module.datasets[split].lengths for split in ("train", "val")}
        try:  # a budget some samples exceed: every rank must raise the same, complete report
            _module(processor, data, max_length=40).setup("fit")
            report = ""
        except Exception as exc:  # noqa: BLE001 - the message is compared across ranks
            report = str(exc)
        Path(out, f"rank{rank}.json").write_text(
            json.dumps({"lengths": lengths, "report": report, "measured": sum(measured)})
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_share_the_work_and_agree_with_one_process(tiny_replica, tmp_path: Path) -> None:  # noqa: ANN001
    files = write_receipt_dataset(tmp_path / "data", n_train=7, n_val=3, n_test=1)
    data = {k: str(v) for k, v in files.items()}
    processor = str(tiny_replica("qwen2_vl"))
    single = _module(processor, data, max_length=400, cache=str(tmp_path / "cache0"))
    single.setup("fit")
    expected = {split: single.datasets[split].lengths for split in ("train", "val")}
    with pytest.raises(Exception) as too_long:
        _module(processor, data, max_length=40).setup("fit")
    mp.spawn(_worker, args=(2, free_port(), processor, data, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert expected["train"] and len(expected["train"]) == 7
    assert [r["measured"] for r in ranks] == [4 + 2, 3 + 1]  # train 7 and val 3, every other sample
    for result in ranks:
        assert result["lengths"] == expected
        assert result["report"] and sorted(result["report"].splitlines()) == sorted(
            str(too_long.value).splitlines()
        )
