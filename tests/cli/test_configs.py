"""Every shipped YAML config parses against the CLI (keys and types), without loading any model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlm_lightning.cli.lightning_cli import build_cli

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    raw = yaml.safe_load(config.read_text())
    assert resolved["model"]["name_or_path"] == raw["model"]["name_or_path"]
    for section in ("model", "data", "trainer"):
        for key, value in (raw.get(section) or {}).items():
            if not isinstance(value, dict):
                assert resolved[section][key] == value, (section, key)


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name_or_path: x\n  lora_rank: 8\n")
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code not in (0, None)


def test_the_learning_rate_is_one_flag_without_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--model.name_or_path", "m", "--model.optimizer.lr", "1e-3", "--print_config"])
    assert exit_info.value.code in (0, None)
    optimizer = yaml.safe_load(capsys.readouterr().out)["model"]["optimizer"]
    assert optimizer["class_path"] == "torch.optim.AdamW"
    assert optimizer["init_args"]["lr"] == 1e-3 and optimizer["init_args"]["weight_decay"] == 0.0
