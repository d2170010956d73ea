"""Preemption and resume: SIGINT / SIGTERM save a resumable ``last.ckpt`` and print the resume command; the
resumed run continues at the next batch and matches an uninterrupted one.

The in-process tests use a tiny LightningModule (deterministic signals); one test kills a real
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

import pytest
import torch
from fit_helpers import PoisonModule, fit_args, guarded_trainer, id_loader, run_cli

from vlm_lightning.callbacks.nonfinite import NonFiniteGuard

# --- in-process, deterministic --------------------------------------------------------------------


class _SignalAtStep(PoisonModule):
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
    trainer = guarded_trainer(tmp_path, NonFiniteGuard(), max_steps=50, callbacks=[callback, ckpt])
    with pytest.raises(SIGTERMException) as info:
        trainer.fit(model, id_loader())
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

    resumed = guarded_trainer(tmp_path, NonFiniteGuard(), max_steps=5)
    resumed.fit(PoisonModule(), id_loader(), ckpt_path=path)
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
    trainer = guarded_trainer(tmp_path, NonFiniteGuard(), max_steps=50, callbacks=[PreemptionCheckpoint()])
    with pytest.raises(SystemExit) as info:  # Lightning's KeyboardInterrupt path: graceful shutdown, exit 1
        trainer.fit(model, id_loader())
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


# --- a real `python -m vlm_lightning fit` killed by SIGTERM ------------------------------------

_DONE = re.compile(r"preempted \(SIGTERM\) at step (\d+); saved (\S+)")


def _losses(run: Path) -> dict[int, float]:
    """``{global_step: train/loss}`` from a run's metrics.csv (the CSV ``step`` is global_step - 1)."""
    with (run / "metrics.csv").open() as fh:
        return {int(r["step"]) + 1: float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_exits_cleanly_and_resume_matches_uninterrupted(
    tiny_replica: Any, receipt_data: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny_replica("qwen2_vl")
    total = 40  # the signal lands a few steps in; the resumed run continues to 40
    run_root = tmp_path / "preempted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlm_lightning", *fit_args(model, receipt_data, run_root, 100_000)],
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
    resumed = run_cli(
        fit_args(model, receipt_data, tmp_path / "resumed", total, "--ckpt_path", str(saved)), tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning sees the loader's position
    straight = run_cli(fit_args(model, receipt_data, tmp_path / "straight", total), tmp_path)
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


# --- the data loader's position --------------------------------------------------------------


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


def test_ckpt_path_last_resumes_the_newest_run_under_the_root(
    tiny_replica: Any, receipt_data: dict[str, Path], tmp_path: Path
) -> None:
    """``fit --ckpt_path last`` (a requeued job's command): the first run says it starts anew, the second
    continues ``version_0`` from its ``last.ckpt`` (Lightning alone would look in a new ``version_1``)."""
    from vlm_lightning.checkpoints.io import validate_checkpoint

    model, root = tiny_replica("qwen2_vl"), tmp_path / "runs"
    cosine = ("--model.scheduler", "cosine")  # a schedule over the run's length: 2 steps, then 4
    first = run_cli(fit_args(model, receipt_data, root, 2, *cosine, "--ckpt_path", "last"), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"--ckpt_path last: no last.ckpt in {root}/version_* yet: a new run" in first.stderr
    last = root / "version_0" / "last.ckpt"
    assert validate_checkpoint(last)["global_step"] == 2
    again = run_cli(fit_args(model, receipt_data, root, 4, *cosine, "--ckpt_path", "last"), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"--ckpt_path last: resuming {last}" in again.stderr
    # the 2-step cosine ended at 0; step 3 trains at the 4-step cosine's value at step 2 (half the peak)
    assert "resumed at step 2: the learning-rate schedule follows this run's length" in again.stderr
    assert "learning rate goes 0 -> 0.0015" in again.stderr
    assert not (root / "version_1").exists()  # one run, one folder
    assert validate_checkpoint(last)["global_step"] == 4
    assert sorted(_losses(last.parent)) == [1, 2, 3, 4]
