"""The data module refuses settings that cannot work when it is made, naming the setting."""

from __future__ import annotations

import pytest

from vlm_lightning.data.datamodule import DocumentDataModule
from vlm_lightning.errors import SettingError


@pytest.mark.parametrize(
    ("setting", "value"),
    [("batch_size", 0), ("eval_batch_size", 0), ("eval_batch_size", -2), ("max_tokens_per_row", 0)],
)
def test_sizes_below_one_are_refused(setting: str, value: int) -> None:
    extra = {"packing": True} if setting == "max_tokens_per_row" else {}
    with pytest.raises(SettingError, match=rf"data.{setting} must be >= 1, got {value}"):
        DocumentDataModule(train="t.jsonl", **{setting: value}, **extra)


def test_the_evaluation_batch_size_defaults_to_the_training_one() -> None:
    assert DocumentDataModule(train="t.jsonl", batch_size=3).eval_batch_size == 3
    assert DocumentDataModule(train="t.jsonl", batch_size=3, eval_batch_size=5).eval_batch_size == 5
