"""Atomic checkpoint writes and clear errors for missing, truncated, foreign and unsafe checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from vlm_lightning.checkpoints.io import (
    AtomicCheckpointIO,
    CheckpointError,
    is_sharded_checkpoint,
    validate_checkpoint,
)


def _our_checkpoint(step: int = 3) -> dict[str, Any]:
    """The shape of a vlm_lightning checkpoint (keys Lightning and our module write)."""
    return {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {"model.lora_A.weight": torch.full((4, 8), float(step))},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"ready": 1}}}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "lr_schedulers": [],
        "vlm_lightning": {"family": "qwen2_vl", "mode": "lora", "name_or_path": "x", "trainable_keys": 1},
        "rng_states": {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)},
    }


class _Opaque:
    """A class that is not on torch's weights_only allow-list."""

    def __init__(self) -> None:
        self.payload = "would run arbitrary code on load"


def _partial_torch_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    """torch.save that dies half way through: writes half of the bytes, then raises."""
    import io

    buf = io.BytesIO()
    _REAL_SAVE(obj, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    raise OSError("disk quota exceeded (simulated)")


_REAL_SAVE = torch.save


# --- atomic writes ------------------------------------------------------------------------------


def test_failed_write_leaves_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "run" / "last.ckpt"
    io_plugin.save_checkpoint(_our_checkpoint(step=3), path)
    before = path.read_bytes()

    monkeypatch.setattr(torch, "save", _partial_torch_save)
    with pytest.raises(OSError, match="simulated"):
        io_plugin.save_checkpoint(_our_checkpoint(step=4), path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert validate_checkpoint(path)["global_step"] == 3
    assert list(path.parent.iterdir()) == [path]  # the temporary file was removed


def test_plain_torch_save_would_truncate_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control for the test above: writing in place leaves a truncated file, which validation reports."""
    path = tmp_path / "last.ckpt"
    torch.save(_our_checkpoint(step=3), path)
    monkeypatch.setattr(torch, "save", _partial_torch_save)
    with pytest.raises(OSError), open(path, "wb") as fh:
        torch.save(_our_checkpoint(step=4), fh)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        validate_checkpoint(path)


@pytest.mark.slow
def test_process_killed_while_writing_keeps_previous_checkpoint(tmp_path: Path) -> None:
    """A real SIGKILL in the middle of a write (no Python clean-up runs)."""
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_checkpoint_io import _our_checkpoint
        from vlm_lightning.checkpoints.io import AtomicCheckpointIO

        io_plugin = AtomicCheckpointIO()
        io_plugin.save_checkpoint(_our_checkpoint(step=3), {str(path)!r})
        real_save = torch.save

        def dying_save(obj, f, *a, **k):
            import io
            buf = io.BytesIO(); real_save(obj, buf)
            f.write(buf.getvalue()[:1000]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dying_save
        io_plugin.save_checkpoint(_our_checkpoint(step=4), {str(path)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert validate_checkpoint(path)["global_step"] == 3
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith("last.ckpt.tmp-")  # the half-written temp file


def test_atomic_io_round_trip_and_trainer_integration(tmp_path: Path) -> None:
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["vlm_lightning"] = {"family": "tiny", "mode": "full"}

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)

    def trainer_for(max_steps: int) -> L.Trainer:
        return L.Trainer(
            max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
            plugins=[AtomicCheckpointIO()],
        )  # fmt: skip

    trainer = trainer_for(2)
    trainer.fit(Tiny(), data)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    assert validate_checkpoint(tmp_path / "x.ckpt")["global_step"] == 2
    resumed = trainer_for(3)
    resumed.fit(Tiny(), data, ckpt_path=tmp_path / "x.ckpt")
    assert resumed.global_step == 3
    (tmp_path / "foreign.ckpt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        trainer_for(4).fit(Tiny(), data, ckpt_path=tmp_path / "foreign.ckpt")


# --- validation -----------------------------------------------------------------------------------


def test_validate_accepts_our_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ok.ckpt"
    torch.save(_our_checkpoint(), path)
    ckpt = validate_checkpoint(path)
    assert ckpt["vlm_lightning"]["family"] == "qwen2_vl"
    assert torch.equal(ckpt["state_dict"]["model.lora_A.weight"], torch.full((4, 8), 3.0))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, r"checkpoint not found: .*nothing\.ckpt"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_bytes(b"garbage, not a checkpoint at all" * 10), r"truncated or corrupt"),
        (lambda p: p.write_text('{"state_dict": {}}'), r"truncated or corrupt"),
        (lambda p: p.mkdir(), r"not a file"),
    ],
    ids=["missing", "zero-byte", "garbage", "json", "directory"],
)
def test_validate_rejects_unusable_files(tmp_path: Path, make: Any, expected: str) -> None:
    path = tmp_path / "nothing.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=expected):
        validate_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_validate_rejects_truncated_checkpoint(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.ckpt"
    torch.save(_our_checkpoint(), full)
    data = full.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt .*truncated or corrupt"):
        validate_checkpoint(cut)


def test_validate_rejects_foreign_files(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match=r"not a Lightning checkpoint .*keys \['layer.weight'\]"):
        validate_checkpoint(weights)

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint \\(a Tensor"):
        validate_checkpoint(tensor)

    other = tmp_path / "other_lightning.ckpt"
    ckpt = _our_checkpoint()
    del ckpt["vlm_lightning"]
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="not written by vlm_lightning"):
        validate_checkpoint(other)
    assert validate_checkpoint(other, require_ours=False)["global_step"] == 3


def test_validate_refuses_pickled_objects_outside_the_allow_list(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.ckpt"
    ckpt = _our_checkpoint()
    ckpt["hyper_parameters"] = {"thing": _Opaque()}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"outside the weights_only allow-list .*_Opaque"):
        validate_checkpoint(path)


@pytest.mark.slow
def test_lora_settings_in_hparams_load_with_weights_only(tmp_path: Path) -> None:
    """``VLMFineTuner(lora=LoraSettings(...))`` used from Python keeps the dataclass in hyper_parameters."""
    from vlm_lightning.models.peft_setup import LoraSettings

    path = tmp_path / "lora.ckpt"
    ckpt = _our_checkpoint()
    ckpt["hyper_parameters"] = {"lora": LoraSettings(r=4), "name_or_path": "x"}
    torch.save(ckpt, path)
    assert validate_checkpoint(path)["hyper_parameters"]["lora"].r == 4
    # a fresh interpreter that has not imported our allow-list refuses the same file
    check = (
        "import torch, sys\n"
        f"try:\n    torch.load({str(path)!r}, weights_only=True)\nexcept Exception as e:\n"
        "    print(type(e).__name__); sys.exit(0)\nsys.exit(1)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0 and "UnpicklingError" in proc.stdout


def test_a_sharded_folder_reads_whole_or_as_settings_only(tmp_path) -> None:  # noqa: ANN001
    """One process puts a sharded checkpoint together (test, export); ``--ckpt_path`` parsing reads only its
    metadata and skips that work."""
    folder = tmp_path / "last.ckpt"
    weight = torch.arange(6.0).reshape(2, 3)
    moments = {"exp_avg": torch.ones(2, 3), "exp_avg_sq": torch.ones(2, 3)}
    dcp.save({"state_dict": {"model.lora_A.weight": weight}, "optimizer_0": {"state": {"0": moments}}},
             checkpoint_id=str(folder))  # fmt: skip
    torch.save(
        {"global_step": 4, "pytorch-lightning_version": "2.6.6", "vlm_lightning": {"family": "qwen2_vl"}},
        folder / "meta.pt",
    )
    assert is_sharded_checkpoint(folder)
    whole = validate_checkpoint(folder)
    torch.testing.assert_close(whole["state_dict"]["model.lora_A.weight"], weight)
    assert whole["global_step"] == 4
    assert (
        list(whole["state_dict"]) == ["model.lora_A.weight"] and whole["optimizer_states"] == []
    )  # weights only
    settings = validate_checkpoint(folder, weights=False)
    assert settings["vlm_lightning"] == {"family": "qwen2_vl"} and "state_dict" not in settings


def test_an_epoch_cut_by_max_steps_is_reopened_and_a_finished_one_is_not() -> None:
    from vlm_lightning.training.checkpoint_state import reopen_epoch_cut_by_max_steps

    def checkpoint(processed: int, completed: int, last_batch: bool) -> dict:
        counts = {"ready": 1, "started": 1, "processed": processed, "completed": completed}
        return {
            "loops": {
                "fit_loop": {
                    "epoch_progress": {"total": dict(counts), "current": dict(counts)},
                    "epoch_loop.batch_progress": {"is_last_batch": last_batch},
                }
            }
        }

    cut = checkpoint(1, 0, last_batch=False)  # written in on_train_epoch_end after max_steps, 4 of 9 batches
    assert reopen_epoch_cut_by_max_steps(cut)
    assert cut["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 0
    assert cut["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"] == 0
    finished = checkpoint(1, 0, last_batch=True)  # the epoch's last batch ran: it really ended
    assert not reopen_epoch_cut_by_max_steps(finished)
    mid_epoch = checkpoint(0, 0, last_batch=False)  # written at a batch end (preemption, every_n_train_steps)
    assert not reopen_epoch_cut_by_max_steps(mid_epoch)
    assert not reopen_epoch_cut_by_max_steps({})  # not a Lightning training checkpoint
