"""The start-up checks on hand-written settings and records."""

from __future__ import annotations

import re

import pytest

from vlm_lightning.cli.startup_checks import (
    check_lora_targets,
    check_metrics_fit_answers,
    check_monitor,
    logged_metric_keys,
)
from vlm_lightning.data.records import Record
from vlm_lightning.errors import SettingError
from vlm_lightning.models.peft_setup import LoraSettings


def _record(answer: str, line: int) -> Record:
    return Record(f"r{line}", [], [], [answer], meta={"source": "v.jsonl", "line": line})


@pytest.mark.parametrize("targets", ["attention", "attention_mlp", "all_linear", r".*\.q_proj", "a|b"])
def test_presets_and_regexes_pass(targets: str) -> None:
    check_lora_targets(targets)


def test_a_bare_word_is_refused_with_the_closest_preset() -> None:
    with pytest.raises(SettingError, match="did you mean 'attention_mlp'"):
        check_lora_targets("attention_mpl")
    with pytest.raises(SettingError, match="neither a preset"):
        check_lora_targets("q_proj")  # PEFT full-matches dotted names: a bare word matches no layer


def test_json_metrics_need_json_answers_and_name_the_rows() -> None:
    records = [_record('{"a": 1}', 1), _record("Paris", 2), _record("[1, 2]", 3)]
    with pytest.raises(SettingError, match=r"1 of 3 rows of data.val .*v.jsonl:2 'Paris'"):
        check_metrics_fit_answers(["exact_match", "tree"], {"val": records})
    check_metrics_fit_answers(["anls", "exact_match"], {"val": records})  # text metrics take any answer


def test_logged_keys_follow_the_data() -> None:
    keys = logged_metric_keys(["receipt"], [['{"store_name": "A", "total": 1}']])
    assert "field_acc/store_name" in keys and "field_acc/total" in keys


def test_monitor_checks() -> None:
    answers = [['{"store_name": "A"}']]
    check_monitor("val/loss", ["anls"], True, answers)
    check_monitor("val/field_acc/store_name", ["receipt"], True, answers)
    check_monitor(None, ["anls"], True, answers)
    with pytest.raises(SettingError, match="monitor one of val/loss, val/token_acc, val/anls"):
        check_monitor("val/exact_match", ["anls"], True, answers)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dropout": -0.1}, "model.lora.dropout must be in [0, 1)"),
        ({"dropout": 1.0}, "model.lora.dropout must be in [0, 1)"),
        ({"r": 0}, "model.lora.r must be a whole number >= 1, got 0"),
        ({"alpha": 0}, "model.lora.alpha must be a number > 0, got 0"),
    ],
)
def test_lora_settings_out_of_range_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingError, match=re.escape(message)):
        LoraSettings(**kwargs)
    assert LoraSettings(r=8, alpha=16, dropout=0.05).dropout == 0.05
