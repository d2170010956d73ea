"""Training curves, W&B guards (no key -> clear error, offline runs), prediction table, and the LoRA sweep."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fixtures_data import write_receipt_dataset

from vlm_lightning.callbacks.curves import TrainingCurves, plot_curves, read_metrics_csv
from vlm_lightning.callbacks.tracking import (
    TrackingChecks,
    TrackingConfigError,
    check_logger_config,
    refuse_secret_arguments,
    wandb_key_source,
)

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WANDB = "lightning.pytorch.loggers.WandbLogger"
FAKE_KEY = "fakekey0123456789abcdef0123456789abcdef01"  # 40 characters, never valid


def load_sweep_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sweep_script", REPO / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
        assert min(image.size) >= 200


@pytest.fixture
def no_wandb_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No key anywhere: env unset, HOME (and ~/.netrc) in tmp, cwd without .env."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DISABLED", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


# --- fast checks (no model) --------------------------------------------------------------------
def test_key_sources(no_wandb_credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wandb_key_source() is None
    (no_wandb_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + FAKE_KEY)
    assert wandb_key_source() == str(no_wandb_credentials / ".netrc")
    (no_wandb_credentials / ".netrc").unlink()
    (tmp_path / ".env").write_text(f"WANDB_API_KEY={FAKE_KEY}\n")
    assert wandb_key_source() == "$WANDB_API_KEY from .env"
    assert wandb_key_source() == "$WANDB_API_KEY"  # now in the environment


def test_logger_config_checks(no_wandb_credentials: Path) -> None:
    wandb_cfg = {"class_path": WANDB, "init_args": {"project": "p"}}
    with pytest.raises(TrackingConfigError, match="WANDB_API_KEY") as info:
        check_logger_config(wandb_cfg)
    assert "offline" in str(info.value)
    assert check_logger_config([{"class_path": "lightning.pytorch.loggers.CSVLogger"}, True]) == []
    assert check_logger_config(None) == [] and check_logger_config(False) == []
    offline = {"class_path": WANDB, "init_args": {"offline": True}}
    assert check_logger_config([offline]) == ["W&B offline (offline: true)"]
    assert check_logger_config(wandb_cfg, env={"WANDB_MODE": "offline", "HOME": "/nonexistent"})
    assert check_logger_config(wandb_cfg, env={"WANDB_API_KEY": FAKE_KEY}) == [
        "W&B online (key from $WANDB_API_KEY)"
    ]
    leaky = {"class_path": WANDB, "init_args": {"offline": True, "settings": {"api_key": FAKE_KEY}}}
    with pytest.raises(TrackingConfigError, match="init_args.settings.api_key.*WANDB_API_KEY"):
        check_logger_config(leaky)


def test_secret_arguments_refused_before_parsing(tmp_path: Path) -> None:
    for args in (
        ["fit", "--trainer.logger", WANDB, "--trainer.logger.init_args.api_key", FAKE_KEY],
        ["fit", f"--trainer.logger.init_args.settings.api_key={FAKE_KEY}"],
        ["fit", "--trainer.logger", json.dumps({"class_path": WANDB, "init_args": {"api_key": FAKE_KEY}})],
    ):
        with pytest.raises(TrackingConfigError, match="WANDB_API_KEY") as info:
            refuse_secret_arguments(args)
        assert FAKE_KEY not in str(info.value)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"trainer:\n  logger:\n    class_path: {WANDB}\n    init_args:\n      api_key: {FAKE_KEY}\n"
    )
    with pytest.raises(TrackingConfigError):
        refuse_secret_arguments(["fit", "--config", str(config)])
    refuse_secret_arguments(["fit", "--model.generate_max_new_tokens", "16", "--trainer.logger", WANDB])


def test_plot_curves_from_csv(tmp_path: Path) -> None:
    rows = ["epoch,step,lr-AdamW,train/loss,val/loss,val/json_valid_rate"]
    for step in range(20):
        rows.append(f"0,{step},{0.001 * (1 - step / 20)},,,")
        rows.append(f"0,{step},,{3 - step * 0.1},,")
        if step % 5 == 4:
            rows.append(f"0,{step},,,{2.5 - step * 0.05},{step / 20}")
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    series = read_metrics_csv(tmp_path / "metrics.csv")
    assert len(series["train/loss"]) == 20 and len(series["val/loss"]) == 4 and len(series["lr-AdamW"]) == 20
    path = plot_curves(series, tmp_path / "curves.png", monitor="val/json_valid_rate")
    assert_png(path)


def test_sweep_base_config_is_relative_to_the_sweep_file(tmp_path: Path) -> None:
    sweep = load_sweep_module()
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "base.yaml").write_text("model: {}\n")
    assert sweep.resolve_base_config(tmp_path / "sweeps" / "s.yaml", "../base.yaml") == tmp_path / "base.yaml"
    with pytest.raises(sweep.SweepError, match="base_config 'missing.yaml' not found"):
        sweep.resolve_base_config(tmp_path / "sweeps" / "s.yaml", "missing.yaml")
    key = sweep.settings_key(tmp_path / "base.yaml", ["--a=1"], ["--model.lora.r=4"])
    assert key == sweep.settings_key(tmp_path / "base.yaml", ["--a=1"], ["--model.lora.r=4"])
    assert key != sweep.settings_key(tmp_path / "base.yaml", ["--a=2"], ["--model.lora.r=4"])
    (tmp_path / "base.yaml").write_text("model: {lr: 1}\n")  # the base config's content counts too
    assert key != sweep.settings_key(tmp_path / "base.yaml", ["--a=1"], ["--model.lora.r=4"])


def test_sweep_grid_helpers() -> None:
    sweep = load_sweep_module()
    points = sweep.grid_points({"model.lora.r": [4, 8], "alpha_ratio": [1, 2.5]})
    assert [sweep.point_name(p) for p in points] == [
        "r4_alpha_ratio1",
        "r4_alpha_ratio2.5",
        "r8_alpha_ratio1",
        "r8_alpha_ratio2.5",
    ]
    assert sweep.point_args(points[1], {}, []) == ["--model.lora.r=4", "--model.lora.alpha=10"]
    base = {"model": {"lora": {"r": 16}}}
    assert sweep.point_args({"alpha_ratio": 2}, base, []) == ["--model.lora.alpha=32"]
    assert sweep.point_args({"alpha_ratio": 2}, base, ["--model.lora.r", "6"]) == ["--model.lora.alpha=12"]
    assert sweep.point_args({"model.optimizer.init_args.lr": 0.0003}, {}, []) == [
        "--model.optimizer.init_args.lr=0.0003"
    ]
    line = (
        "[vlm_lightning] qwen2_vl lora: trainable params: 8,192 || all params: 194,464 || trainable%: 4.2126"
    )
    assert sweep.parse_trainable("noise\n" + line + "\n") == (8192, 4.2126)


# --- runs on the tiny replica ------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_receipt_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=2, n_test=2)


def cli_args(model: Path, data: dict[str, Path], root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--model.name_or_path", str(model),
        "--model.metrics", "[json]",
        "--model.generate_max_new_tokens", "8",
        "--model.warmup_steps", "0",
        "--data.train", str(data["train"]),
        "--data.val", str(data["val"]),
        "--data.test", str(data["test"]),
        "--data.batch_size", "4",
        "--data.max_length", "400",
        "--data.image_max_tokens", "16",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.max_steps", "4",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--checkpoint.monitor", "val/json_valid_rate",
        "--checkpoint.mode", "max",
        *extra,
    ]  # fmt: skip


def tracking_integrated() -> bool:
    from vlm_lightning.cli.lightning_cli import VLMLightningCLI

    return issubclass(VLMLightningCLI, TrackingChecks) or "check_cli_config" in vars(
        sys.modules["vlm_lightning.cli.lightning_cli"]
    )


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """``build_cli`` with the tracking checks (applied here until cli.py carries them)."""
    from vlm_lightning.cli import lightning_cli as cli

    if not tracking_integrated():
        monkeypatch.setattr(cli, "VLMLightningCLI", type("CLI", (TrackingChecks, cli.VLMLightningCLI), {}))
    return cli.build_cli


@pytest.fixture
def wandb_cleanup() -> Iterator[None]:
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.mark.slow
def test_fit_writes_training_curves(tiny_replica, data, tmp_path, capsys) -> None:  # noqa: ANN001
    from vlm_lightning.cli.lightning_cli import build_cli

    args = cli_args(
        tiny_replica("qwen2_vl"),
        data,
        tmp_path,
        "--trainer.callbacks+=vlm_lightning.callbacks.curves.TrainingCurves",
    )
    cli = build_cli(args)
    run = Path(cli.trainer.log_dir)
    png = run / "training_curves.png"
    assert_png(png, min_bytes=20_000)
    assert f"[vlm_lightning] training curves: {png}" in capsys.readouterr().out
    logged = read_metrics_csv(run / "metrics.csv")
    assert logged["val/json_valid_rate"] and not logged.get("train/loss")  # 4 steps, a row every 10
    curves = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingCurves))  # the one that draws
    series, source = curves.collect(cli.trainer)
    assert source.endswith("metrics.csv + callback history")
    assert [step for step, _ in series["train/loss"]] == [0.0, 1.0, 2.0, 3.0]  # every step, from the history
    assert series["val/json_valid_rate"] == logged["val/json_valid_rate"] and len(series["lr-AdamW"]) == 4


@pytest.mark.slow
def test_wandb_without_key_fails_fast(build, no_wandb_credentials, tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    args = cli_args(tiny_replica("qwen2_vl"), data, tmp_path / "run", "--trainer.logger", WANDB)
    start = time.perf_counter()
    with pytest.raises(TrackingConfigError, match="no W&B API key was found") as info:
        build(args)
    assert time.perf_counter() - start < 20
    assert "WANDB_MODE=offline" in str(info.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "wandb").exists()


@pytest.mark.slow
def test_wandb_without_key_exits_2_from_the_command_line(
    no_wandb_credentials, tiny_replica, data, tmp_path
) -> None:  # noqa: ANN001
    assert tracking_integrated()
    args = cli_args(tiny_replica("qwen2_vl"), data, tmp_path / "run", "--trainer.logger", WANDB)
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no W&B API key was found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_api_key_argument_is_refused(build, no_wandb_credentials, tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    args = cli_args(
        tiny_replica("qwen2_vl"), data, tmp_path / "run",
        "--trainer.logger", WANDB,
        "--trainer.logger.init_args.offline", "true",
        "--trainer.logger.init_args.settings.api_key", FAKE_KEY,
    )  # fmt: skip
    with pytest.raises(TrackingConfigError, match="use|WANDB_API_KEY"):
        build(args)
    assert not list(tmp_path.rglob("config.yaml"))


@pytest.mark.slow
def test_wandb_offline_fit_logs_table_and_curves(  # noqa: ANN001
    build, no_wandb_credentials, wandb_cleanup, tiny_replica, data, tmp_path, monkeypatch
) -> None:
    import wandb  # noqa: F401

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # present, but must not be written anywhere
    monkeypatch.setenv("WANDB_SILENT", "true")
    save_dir = tmp_path / "wb"
    args = cli_args(
        tiny_replica("qwen2_vl"), data, tmp_path / "root",
        "--trainer.logger", WANDB,
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.logger.init_args.project", "vlm-tests",
        "--trainer.callbacks+=vlm_lightning.callbacks.curves.TrainingCurves",
        "--trainer.callbacks+=vlm_lightning.callbacks.tracking.PredictionTable",
        "--trainer.callbacks.max_samples=2",
    )  # fmt: skip
    cli = build(args)

    wandb.finish()
    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(save_dir.rglob("*"))
    assert list(runs[0].glob("*.wandb"))
    tables = list(runs[0].glob("files/media/table/val/samples_*.table.json"))
    assert tables, "no prediction table logged"
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "id", "image", "prompt", "prediction", "target"]
    assert 1 <= len(table["data"]) <= 2 and table["data"][0][2]  # an image cell
    # offline, wandb keeps the full table (image cells -> PNG files) in a staged run-table artifact
    staged = [
        p for p in (no_wandb_credentials / ".local/share/wandb/artifacts/staging").glob("*") if p.is_file()
    ]
    assert any(p.read_bytes()[:8] == PNG_MAGIC for p in staged)
    assert any(b'"_type": "image-file"' in p.read_bytes() for p in staged)
    # curves come from the callback's own history (no CSVLogger in this run)
    assert_png(Path(cli.trainer.log_dir) / "training_curves.png")
    curves = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingCurves))
    assert [s for s, _ in curves.history["train/loss"]] == [0, 1, 2, 3]
    assert len(curves.history["lr-AdamW"]) == 4 and curves.history["val/json_valid_rate"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), f"the W&B key leaked into {path}"


@pytest.mark.slow
def test_sweep_2x2_then_resume(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "sweep"
    cmd = [
        sys.executable, str(REPO / "scripts" / "sweep.py"), str(REPO / "configs/sweeps/quickstart.yaml"),
        "--out", str(out), "--metric", "test/json_valid_rate", "--",
        f"--model.name_or_path={tiny_replica('qwen2_vl')}",
        f"--data.train={data['train']}", f"--data.val={data['val']}",
        f"--data.test={data['test']}", f"--data.predict={data['test']}",
        "--model.metrics=[json]", "--model.generate_max_new_tokens=8", "--data.max_length=400",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert {(r["r"], r["alpha"]) for r in rows} == {("4", "8"), ("4", "16"), ("8", "8"), ("8", "16")}
    assert all(r["status"] == "ok" and int(r["trainable_params"]) > 0 for r in rows)
    assert all(0.0 <= float(r["test/json_valid_rate"]) <= 1.0 for r in rows)
    params = {r["r"]: int(r["trainable_params"]) for r in rows}
    assert params["8"] == 2 * params["4"]
    md = (out / "results.md").read_text()
    assert md.count("| r4_") == 2 and md.count("| r8_") == 2
    for name in ("chart_r.png", "chart_alpha.png"):
        assert_png(out / name)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert len(finished) == 4

    start = time.perf_counter()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, skipped") == 4
    assert "running" not in again.stdout
    assert time.perf_counter() - start < 30
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")} == finished
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    # other arguments after `--`: the finished points no longer match and run again (shown by a dry run)
    changed = [*cmd, "--model.optimizer.init_args.lr=0.5", "--dry-run"]
    changed.remove("--dry-run")
    changed.insert(changed.index("--"), "--dry-run")
    rerun = subprocess.run(changed, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # from another folder: base_config is found
    assert rerun.stdout.count("finished earlier with other settings, running again") == 4
    assert "finished earlier, skipped" not in rerun.stdout
