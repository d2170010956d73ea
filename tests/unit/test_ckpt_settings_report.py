"""The settings a checkpoint replaces on the command line are listed one by one."""

from __future__ import annotations

from jsonargparse import Namespace

from vlm_lightning.cli import _plain, _replaced


def test_each_replaced_leaf_is_listed_with_both_values() -> None:
    given = _plain(Namespace(lora=Namespace(r=3, alpha=32), metrics=None, _instantiator="x", mode="lora"))
    used = _plain(Namespace(lora=Namespace(r=32, alpha=32), metrics=["json"], _instantiator="y", mode="lora"))
    assert _replaced(given, used) == ["model.lora.r: 32 (given 3)", "model.metrics: ['json'] (given None)"]


def test_a_default_in_the_checkpoint_replaces_a_whole_group() -> None:
    assert _replaced({"lora": {"r": 3}}, {"lora": None}) == [
        "model.lora: None (the default) (given {'r': 3})"
    ]


def test_same_settings_report_nothing() -> None:
    same = {"lora": {"r": 8}, "mode": "lora"}
    assert _replaced(same, dict(same)) == []
