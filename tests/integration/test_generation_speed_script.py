"""scripts/generation_speed.py: its batch times and table from hand-written prediction rows, and its commands."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generation_speed.py"


def _script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("generation_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["generation_speed"] = module
    spec.loader.exec_module(module)
    return module


def test_batches_are_timed_from_the_rows_latencies_and_compared_with_hf_generate() -> None:
    speed = _script()
    rows = [{"latency_ms": ms} for ms in (500, 500, 100, 100, 50)]  # batches of 2: 1.0 s, 0.2 s, 0.05 s
    assert speed.batch_seconds(rows, 2) == [1.0, 0.2, 0.05]
    results = [
        {"name": speed.REFERENCE, "cache": "cold", "prompts": 2, "total_s": 4.0, "first_s": 2.0, "rest_s": 2.0, "wall_s": 9,
         "predictions": ["a", "b"]},
        {"name": "default (static cache, LoRA merged)", "cache": "cold", "prompts": 2, "total_s": 2.0, "first_s": 1.5,
         "rest_s": 0.5, "wall_s": 8, "predictions": ["a", "c"]},
    ]  # fmt: skip
    table = speed.table(results, 1)
    assert (
        "| default (static cache, LoRA merged) | cold | 2 | 2.00 | 1.50 | 0.50 | 2.00x | 4.00x | 1/2 | 8 |"
        in table
    )


def test_each_variant_is_the_test_command_with_its_settings(tmp_path: Path) -> None:
    speed = _script()
    args = speed.parse_args(
        ["--run", str(tmp_path), "--test", "t.jsonl", "--prompts", "64", "--batch-size", "16"]
    )
    command = speed.test_command(args, speed.REFERENCE, tmp_path / "v")
    assert command[1:4] == ["-m", "vlm_lightning", "test"]
    assert ["--trainer.limit_test_batches", "4"] == command[command.index("--trainer.limit_test_batches") :][
        :2
    ]
    assert command[-8:] == [
        "--model.generation_cache",
        "dynamic",
        "--model.merge_lora_for_generation",
        "false",
        "--model.compile_language_model",
        "false",
        "--model.compile_vision_tower",
        "false",
    ]


def test_every_variant_compiles_into_its_own_cache_and_warm_runs_compare_with_warm(tmp_path: Path) -> None:
    speed = _script()
    env = speed.compiler_cache_env(tmp_path / "variant-0-cache")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "variant-0-cache" / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "variant-0-cache" / "triton")
    row = {"prompts": 1, "first_s": 1.0, "rest_s": 1.0, "wall_s": 1, "predictions": ["a"]}
    results = [
        {**row, "name": speed.REFERENCE, "cache": "cold", "total_s": 4.0},
        {**row, "name": speed.REFERENCE, "cache": "warm", "total_s": 2.0},
        {**row, "name": "default (static cache, LoRA merged)", "cache": "warm", "total_s": 1.0},
    ]
    table = speed.table(results, 1)
    assert "| default (static cache, LoRA merged) | warm | 1 | 1.00 | 1.00 | 1.00 | 2.00x |" in table


def test_unknown_variant_numbers_and_no_repeats_are_refused_by_the_parser(capsys) -> None:  # noqa: ANN001
    speed = _script()
    base = ["--run", "r", "--test", "t.jsonl"]
    assert speed.parse_args([*base, "--variants", "0,1"]).variants == [0, 1]
    for flag, value in (("--variants", "9"), ("--variants", "a"), ("--repeat", "0")):
        with pytest.raises(SystemExit):
            speed.parse_args([*base, flag, value])
        assert f"argument {flag}" in capsys.readouterr().err
