"""Reliability: preemption checkpoints, non-finite losses, secrets kept out of run files.

The non-finite tests use a tiny LightningModule (milliseconds); the preemption and secrets tests run
``python -m vlm_lightning fit`` on the tiny Qwen2-VL replica in a subprocess (``slow``).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vlm_lightning.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError

# --- non-finite loss ------------------------------------------------------------------------------


class _IdDataset(Dataset):
    def __init__(self, n: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "ids": f"s{i}"}


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward (an overflow in backward with a finite loss)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


class _PoisonModule(L.LightningModule):
    """Linear regression whose loss is NaN on the optimizer steps listed in ``poison_steps``."""

    def __init__(
        self, poison_steps: tuple[int, ...] = (), grad_poison_steps: tuple[int, ...] = (), fused: bool = False
    ) -> None:
        super().__init__()
        self.fused = fused  # fused AdamW: the guard drops updates on the device and reads flags late
        self.layer = torch.nn.Linear(4, 1)
        self.poison_steps = poison_steps
        self.grad_poison_steps = grad_poison_steps
        self.weights_at: dict[int, torch.Tensor] = {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.weights_at[self.global_step] = self.layer.weight.detach().clone()
        weight = self.layer.weight
        if self.global_step in self.grad_poison_steps:
            weight = _InfGrad.apply(weight)
        loss = (batch["x"] @ weight.T + self.layer.bias).pow(2).mean()
        if self.global_step in self.poison_steps:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1, fused=self.fused)


def _loader() -> DataLoader:
    return DataLoader(_IdDataset(), batch_size=4, shuffle=False)


def _trainer(tmp_path: Path, guard: NonFiniteGuard, max_steps: int = 6, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[guard, *kwargs.pop("callbacks", [])],
        **kwargs,
    )


FUSED = pytest.mark.parametrize("fused", [False, True], ids=["sync", "deferred"])


@FUSED
def test_nonfinite_stop_names_step_and_batch_ids_and_keeps_last_good_checkpoint(
    tmp_path: Path, fused: bool
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_last=True, save_top_k=0)
    model = _PoisonModule(poison_steps=(3,), fused=fused)
    trainer = _trainer(tmp_path, NonFiniteGuard(action="stop"), callbacks=[ckpt])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(model, _loader())
    text = str(info.value)
    assert "global step 3" in text and "batch 3" in text
    assert "['s12', 's13', 's14', 's15']" in text  # the ids of the 4th batch
    assert "last good checkpoint:" in text
    # the bad update never happened: the weights are those before step 3, and finite
    assert torch.equal(model.layer.weight.detach(), model.weights_at[3])
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


@FUSED
def test_nonfinite_skip_leaves_weights_unchanged_and_continues(tmp_path: Path, fused: bool) -> None:
    model = _PoisonModule(poison_steps=(2,), fused=fused)
    guard = NonFiniteGuard(action="skip")
    trainer = _trainer(tmp_path, guard, max_steps=5)
    with pytest.warns(UserWarning, match=r"global step 2 .*batch ids \['s8', 's9', 's10', 's11'\].*skipped"):
        trainer.fit(model, _loader())
    assert trainer.global_step == 5
    # AdamW with weight decay and momentum: only dropping the gradients keeps the weights bit-identical
    assert torch.equal(model.weights_at[3], model.weights_at[2])
    assert not torch.equal(model.weights_at[2], model.weights_at[1])
    assert torch.isfinite(model.layer.weight).all()
    assert len(guard.skipped) == 1
    opt_state = trainer.optimizers[0].state_dict()["state"][0]
    assert float(opt_state["step"]) == 4  # 5 optimizer calls, one of them dropped


@FUSED
def test_nonfinite_gradient_with_finite_loss_is_caught(tmp_path: Path, fused: bool) -> None:
    model = _PoisonModule(grad_poison_steps=(1,), fused=fused)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite gradient at global step 1 .*\['s4', 's5', 's6', 's7'\]"
    ):
        _trainer(tmp_path, NonFiniteGuard(action="stop")).fit(model, _loader())
    assert torch.isfinite(model.layer.weight).all()


@FUSED
def test_nonfinite_skip_gives_up_after_max_skips(tmp_path: Path, fused: bool) -> None:
    model = _PoisonModule(poison_steps=(1, 2, 3), fused=fused)
    trainer = _trainer(tmp_path, NonFiniteGuard(action="skip", max_skips=2), max_steps=6)
    with pytest.raises(NonFiniteLossError, match="3 consecutive"), pytest.warns(UserWarning):
        trainer.fit(model, _loader())


def test_deferred_guard_reads_the_flag_one_step_late_without_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deferred verdict of step 2 is read inside step 3, after step 3's backward: no per-step wait."""
    from vlm_lightning.callbacks import nonfinite

    reads: list[tuple[int, int]] = []  # (verdict's step, step being run when it was read)
    model = _PoisonModule(poison_steps=(2,), fused=True)
    conclude = nonfinite.NonFiniteGuard._conclude

    def spy(self, trainer, check, optimizer):  # noqa: ANN001, ANN202
        reads.append((check.step, trainer.global_step))
        return conclude(self, trainer, check, optimizer)

    monkeypatch.setattr(nonfinite.NonFiniteGuard, "_conclude", spy)
    guard = NonFiniteGuard(action="skip")
    with pytest.warns(UserWarning, match="global step 2 "):
        _trainer(tmp_path, guard, max_steps=4).fit(model, _loader())
    assert reads == [(0, 1), (1, 2), (2, 3), (3, 4)]  # the last one at the end of training
    assert torch.equal(model.weights_at[3], model.weights_at[2])
    assert not hasattr(model.trainer.optimizers[0], "found_inf")  # taken off after each step


def test_deferred_guard_refuses_an_optimizer_without_found_inf(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"defer=True.*fused"):
        _trainer(tmp_path, NonFiniteGuard(defer=True)).fit(_PoisonModule(), _loader())


def test_nonfinite_weights_are_never_saved(tmp_path: Path) -> None:
    model = _PoisonModule()
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_steps=1)
    trainer.fit(model, _loader())
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    with torch.no_grad():
        model.layer.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="refusing to save"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists() and (tmp_path / "good.ckpt").is_file()


def test_without_guard_the_nan_reaches_the_weights(tmp_path: Path) -> None:
    """Control: the behaviour above is the guard's doing."""
    model = _PoisonModule(poison_steps=(2,))
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, _loader())
    assert not torch.isfinite(model.layer.weight).all()


# --- preemption: in-process, deterministic ------------------------------------------------------


class _SignalAtStep(_PoisonModule):
    """Sends itself ``signum`` during the training step of ``at_step`` (like a scheduler would)."""

    def __init__(self, signum: int, at_step: int, times: int = 1) -> None:
        super().__init__()
        self.signum, self.at_step, self.times = signum, at_step, times

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.at_step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
        return super().training_step(batch, batch_idx)


def test_sigint_saves_resumable_checkpoint_and_restores_handlers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from vlm_lightning.callbacks.preemption import PreemptionCheckpoint
    from vlm_lightning.checkpoints.io import validate_checkpoint

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    callback = PreemptionCheckpoint()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "run", save_last=False, save_top_k=0)
    model = _SignalAtStep(signal.SIGINT, at_step=2)
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_steps=50, callbacks=[callback, ckpt])
    with pytest.raises(SIGTERMException) as info:
        trainer.fit(model, _loader())
    assert info.value.code == 0  # python -m vlm_lightning exits 0
    assert trainer.should_stop and trainer.global_step == 3  # the interrupted batch finished its step
    out = capsys.readouterr().out
    path = tmp_path / "run" / "last.ckpt"
    assert f"preempted (SIGINT) at step 3; saved {path}" in out
    assert f"resume with: python -m vlm_lightning fit ... --ckpt_path {path}" in out
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 3
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 3
    with pytest.raises(Exception, match="not written by vlm_lightning"):
        validate_checkpoint(path)  # a plain LightningModule: resumable by Lightning, not ours
    assert {s: signal.getsignal(s) for s in before} == before  # handlers given back

    resumed = _trainer(tmp_path, NonFiniteGuard(), max_steps=5)
    resumed.fit(_PoisonModule(), _loader(), ckpt_path=path)
    assert resumed.global_step == 5


def test_signal_outside_fit_keeps_default_behaviour() -> None:
    from vlm_lightning.callbacks.preemption import PreemptionCheckpoint

    before = signal.getsignal(signal.SIGINT)
    callback = PreemptionCheckpoint()
    callback._install()
    callback._active = False  # a handler of ours that outlived fit
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        callback._restore()
    assert signal.getsignal(signal.SIGINT) == before


def test_second_ctrl_c_interrupts_at_once(tmp_path: Path) -> None:
    from vlm_lightning.callbacks.preemption import PreemptionCheckpoint

    model = _SignalAtStep(signal.SIGINT, at_step=1, times=2)
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_steps=50, callbacks=[PreemptionCheckpoint()])
    with pytest.raises(SystemExit) as info:  # Lightning's KeyboardInterrupt path: graceful shutdown, exit 1
        trainer.fit(model, _loader())
    assert info.value.code == 1
    assert not list(tmp_path.rglob("last.ckpt"))


def test_resume_command_replaces_ckpt_path_and_redacts(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlm_lightning.callbacks.preemption import resume_command

    monkeypatch.setenv("HF_TOKEN", "hf_FAKE1234567890abcdefghijklmnopq")
    argv = [
        "/x/vlm_lightning/__main__.py",
        "fit",
        "--config",
        "c.yaml",
        "--ckpt_path",
        "old.ckpt",
        "--data.prompt",
        "tok hf_FAKE1234567890abcdefghijklmnopq",
        "--ckpt_path=older.ckpt",
    ]
    command = resume_command("/runs/version_0/last.ckpt", argv)
    assert command == (
        "python -m vlm_lightning fit --config c.yaml --data.prompt 'tok ***' --ckpt_path /runs/version_0/last.ckpt"
    )
    assert (
        resume_command("r/last.ckpt", ["pytest"]) == "python -m vlm_lightning fit ... --ckpt_path r/last.ckpt"
    )


# --- preemption: a real `python -m vlm_lightning fit` killed by SIGTERM ---------------------------

_DONE = re.compile(r"preempted \(SIGTERM\) at step (\d+); saved (\S+)")


def _fit_args(model: Path, data: dict[str, Path], root: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--model.name_or_path",
        str(model),
        "--model.metrics",
        "[exact_match]",
        "--model.val_generate",
        "false",
        "--model.scheduler",
        "constant",  # the schedule must not depend on max_steps (runs differ there)
        "--model.optimizer.class_path",
        "torch.optim.AdamW",
        "--model.optimizer.init_args.lr",
        "0.003",
        "--data.train",
        str(data["train"]),
        "--data.batch_size",
        "1",  # 8 batches per epoch: the signal lands mid-epoch
        "--data.max_length",
        "400",
        "--data.image_max_tokens",
        "16",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.max_steps",
        str(max_steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",  # every step's loss, to compare resumed and uninterrupted runs
        "1",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.logger.init_args.name",
        "",
        "--trainer.logger.init_args.flush_logs_every_n_steps",
        "1",
        "--trainer.callbacks+=vlm_lightning.callbacks.preemption.PreemptionCheckpoint",
        *extra,
    ]


def _losses(run: Path) -> dict[int, float]:
    """``{global_step: train/loss}`` from a run's metrics.csv (the CSV ``step`` is global_step - 1)."""
    with (run / "metrics.csv").open() as fh:
        return {int(r["step"]) + 1: float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlm_lightning", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


def _has_data_position_fix() -> bool:
    from vlm_lightning.data.datamodule import DocumentDataModule

    return "state_dict" in DocumentDataModule.__dict__


@pytest.fixture(scope="module")
def receipt_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fixtures_data import write_receipt_dataset

    return write_receipt_dataset(tmp_path_factory.mktemp("reliability-data"))


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_exits_cleanly_and_resume_matches_uninterrupted(
    tiny_replica: Any, receipt_data: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny_replica("qwen2_vl")
    total = 40  # the signal lands a few steps in; the resumed run continues to 40
    run_root = tmp_path / "preempted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlm_lightning", *_fit_args(model, receipt_data, run_root, 100_000)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = list(run_root.glob("version_*/metrics.csv"))
            if metrics and len(_losses(metrics[0].parent)) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"fit ended before it could be preempted:\n{proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    match = _DONE.search(out)
    assert match, out[-3000:]
    step, saved = int(match.group(1)), Path(match.group(2))
    assert 2 <= step < total, f"preempted at step {step}; the test needs {total} steps"
    assert saved.name == "last.ckpt" and saved.parent.parent == run_root
    assert "resume with: python -m vlm_lightning fit " in out and f"--ckpt_path {saved}" in out

    from vlm_lightning.checkpoints.io import validate_checkpoint

    ckpt = validate_checkpoint(saved)
    assert ckpt["global_step"] == step
    assert "optimizer_states" in ckpt and "lr_schedulers" in ckpt and "rng_states" in ckpt

    first = _losses(saved.parent)
    resumed = _run(
        _fit_args(model, receipt_data, tmp_path / "resumed", total, "--ckpt_path", str(saved)), tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning sees the loader's position
    straight = _run(_fit_args(model, receipt_data, tmp_path / "straight", total), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    # one run, one folder: the resumed fit continued the preempted run's folder and its metrics.csv
    assert not list((tmp_path / "resumed").glob("version_*"))
    joined = _losses(saved.parent)
    reference = _losses(next((tmp_path / "straight").glob("version_*")))
    assert sorted(reference) == list(range(1, total + 1))
    assert sorted(joined) == list(range(1, total + 1))  # every step once: continued at the next step
    assert all(first[s] == joined[s] for s in range(1, step + 1))  # the earlier rows kept as they were
    assert all(first[s] == pytest.approx(reference[s], abs=1e-6) for s in range(1, step + 1))
    assert (saved.parent / "training_curves.png").is_file()
    worst = max(abs(joined[s] - reference[s]) for s in reference)
    print(f"preempted at step {step}/{total}; max |train loss - uninterrupted| over all steps: {worst:.3e}")
    assert worst <= 1e-5, {s: (joined[s], reference[s]) for s in reference}


# --- secrets ------------------------------------------------------------------------------------

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

    class Keyed(_PoisonModule):
        def __init__(self, api_key: str = "") -> None:  # e.g. a tracker credential in the config
            super().__init__()

        def train_dataloader(self) -> DataLoader:
            return _loader()

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
    args = _fit_args(tiny_replica("qwen2_vl"), receipt_data, root, 2)
    proc = _run(args, workdir, env)
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


# --- data position ------------------------------


def test_stream_loader_resumes_at_the_next_batch_and_partitions_ranks() -> None:
    from vlm_lightning.data import sampling

    data = list(range(10))

    def loader(position: Any, world: int = 1, rank: int = 0) -> Any:
        sampler = sampling.EpochShuffleSampler(len(data), seed=3, num_replicas=world, rank=rank)
        return sampling.StreamDataLoader(
            data, batch_size=2, sampler=sampler, position=position, collate_fn=lambda b: list(b)
        )

    straight = loader(sampling.StreamPosition())
    reference = [batch for _ in range(3) for batch in straight]  # 3 epochs x 5 batches
    assert sorted(sum(reference[:5], [])) == data and reference[:5] != reference[5:10]

    first = sampling.StreamPosition()
    seen = []
    for batch in loader(first):  # preempted after 3 batches of epoch 0
        seen.append(batch)
        if len(seen) == 3:
            break
    state = first.state_dict()
    assert state == {"epoch": 0, "batch": 3}
    resumed_position = sampling.StreamPosition()
    resumed_position.load_state_dict(state)
    resumed = loader(resumed_position)
    rest = [b for _ in range(3) for b in resumed]  # Lightning re-creates iterators as it likes
    assert seen + rest[:12] == reference

    # DDP: each epoch is split between ranks without overlap, and each rank resumes on its own share
    shards = [[b for b in loader(sampling.StreamPosition(), world=2, rank=r)] for r in (0, 1)]
    assert sorted(sum(shards[0] + shards[1], [])) == data


@pytest.mark.slow
def test_vlm_nan_loss_stops_with_step_and_sample_ids(
    tiny_replica: Any, receipt_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real module + CLI: a NaN loss at step 2 names the step and the batch's sample ids."""
    from vlm_lightning.cli.lightning_cli import build_cli
    from vlm_lightning.training.module import VLMFineTuner

    original = VLMFineTuner.model_step

    def poisoned(self: VLMFineTuner, batch: dict[str, Any]) -> Any:
        loss, n_tokens, correct = original(self, batch)
        return (loss * float("nan") if self.global_step == 2 else loss), n_tokens, correct

    monkeypatch.setattr(VLMFineTuner, "model_step", poisoned)
    args = _fit_args(
        tiny_replica("qwen2_vl"),
        receipt_data,
        tmp_path,
        5,
        "--trainer.callbacks+=vlm_lightning.callbacks.nonfinite.NonFiniteGuard",
    )
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss nan at global step 2 .*batch ids \['train-\d'\]"
    ):
        build_cli(args)
