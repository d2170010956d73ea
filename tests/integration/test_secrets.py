"""Secrets: tokens from the environment or a ``.env`` file never reach a run's files or output
(``config.yaml``, ``hparams.yaml``, metrics, checkpoints, logs).

The end-to-end check runs ``python -m vlm_lightning fit`` on the tiny Qwen2-VL replica in a subprocess
(``slow``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fit_helpers import PoisonModule, fit_args, id_loader, run_cli
from torch.utils.data import DataLoader

FAKE_HF = "hf_FAKE123abcdefghijklmnopqrstuvwxyz0987"
FAKE_WANDB = "FAKEKEY0123456789abcdef0123456789abcdef01"
FAKE_HUB = "hf_FAKEHUB9876543210zyxwvutsrqponmlkjihg"


def test_load_env_file_never_overrides_and_returns_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlm_lightning.cli.secrets import load_env_file

    env_file = tmp_path / ".env"
    env_file.write_text(f"HF_TOKEN={FAKE_HF}\nWANDB_API_KEY='{FAKE_WANDB}'\n# comment\nexport EXTRA=1\n")
    monkeypatch.setenv("HF_TOKEN", "from-the-environment")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("EXTRA", raising=False)
    assert sorted(load_env_file(env_file)) == ["EXTRA", "WANDB_API_KEY"]
    assert os.environ["HF_TOKEN"] == "from-the-environment" and os.environ["WANDB_API_KEY"] == FAKE_WANDB
    assert load_env_file(tmp_path / "absent.env") == []


def test_redact_and_find_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from jsonargparse import Namespace

    from vlm_lightning.cli.secrets import find_secrets, redact

    monkeypatch.setenv("HF_TOKEN", FAKE_HF)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB)
    config = Namespace(
        model=Namespace(name_or_path="Qwen/x", prompt=f"use {FAKE_HF}"),
        trainer=Namespace(
            logger=Namespace(class_path="X", init_args=Namespace(api_key="plain-text-key", n=3))
        ),
        callbacks=[{"token": "abc", "keep": FAKE_WANDB, "steps": 4}],
    )
    clean = redact(config)
    assert clean.model.prompt == "use ***" and clean.model.name_or_path == "Qwen/x"
    assert clean.trainer.logger.init_args.api_key == "***" and clean.trainer.logger.init_args.n == 3
    assert clean.callbacks == [{"token": "***", "keep": "***", "steps": 4}]
    assert config.model.prompt == f"use {FAKE_HF}"  # the original is untouched
    assert find_secrets(str(clean)) == []
    blob = b"\x00\x01binary" + FAKE_WANDB.encode() + b"\xff"
    assert find_secrets(blob) == ["WANDB_API_KEY"]
    assert find_secrets(f"x {FAKE_HF} y") == ["HF_TOKEN", "hf_token_pattern"]
    assert redact(blob) == b"\x00\x01binary***\xff"


def test_redacting_save_config_callback_keeps_credentials_out_of_config_yaml(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from vlm_lightning.cli.secrets import RedactingSaveConfigCallback

    class Keyed(PoisonModule):
        def __init__(self, api_key: str = "") -> None:  # e.g. a tracker credential in the config
            super().__init__()

        def train_dataloader(self) -> DataLoader:
            return id_loader()

    for callback, expect_secret in ((SaveConfigCallback, True), (RedactingSaveConfigCallback, False)):
        root = tmp_path / callback.__name__
        LightningCLI(
            Keyed,
            save_config_callback=callback,
            save_config_kwargs={"overwrite": True},
            args=[
                "fit",
                "--model.api_key",
                FAKE_WANDB,
                "--trainer.max_steps",
                "1",
                "--trainer.accelerator",
                "cpu",
                "--trainer.default_root_dir",
                str(root),
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.logger",
                "false",
                "--trainer.enable_checkpointing",
                "false",
            ],
        )
        text = (root / "config.yaml").read_text()
        assert (FAKE_WANDB in text) is expect_secret, text
    assert "api_key: '***'" in text or 'api_key: "***"' in text or "api_key: ***" in text


@pytest.mark.slow
def test_fit_writes_no_token_anywhere(
    tiny_replica: Any, receipt_data: dict[str, Path], tmp_path: Path
) -> None:
    from vlm_lightning.cli.secrets import find_secrets

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".env").write_text(f"WANDB_API_KEY={FAKE_WANDB}\nHUGGING_FACE_HUB_TOKEN={FAKE_HUB}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_TOKEN=FAKE_HF, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    root = workdir / "runs"
    args = fit_args(tiny_replica("qwen2_vl"), receipt_data, root, 2)
    proc = run_cli(args, workdir, env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    secrets = {"HF_TOKEN": FAKE_HF, "WANDB_API_KEY": FAKE_WANDB, "HUGGING_FACE_HUB_TOKEN": FAKE_HUB}
    written = [p for p in workdir.rglob("*") if p.is_file() and p.name != ".env"]
    assert any(p.suffix == ".ckpt" for p in written) and any(p.name == "config.yaml" for p in written)
    assert any(p.name == "hparams.yaml" for p in written) and any(p.name == "metrics.csv" for p in written)
    leaks = {str(p): find_secrets(p.read_bytes(), env=secrets) for p in written}
    leaks["<stdout>"] = find_secrets(proc.stdout, env=secrets)
    leaks["<stderr>"] = find_secrets(proc.stderr, env=secrets)
    assert not {k: v for k, v in leaks.items() if v}, leaks

    # the scan itself works on every kind of file it read (text, YAML, binary checkpoints)
    canary = next(p for p in written if p.suffix == ".ckpt")
    assert find_secrets(canary.read_bytes() + FAKE_HUB.encode(), env=secrets) == [
        "HUGGING_FACE_HUB_TOKEN",
        "hf_token_pattern",
    ]
    assert "loaded from .env: HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY" in proc.stderr
