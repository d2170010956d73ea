"""Non-finite guard: a NaN / inf loss or gradient stops the run (naming the step and the batch's sample ids)
or skips the update, never reaches the weights or a checkpoint.

Most tests use a tiny LightningModule (milliseconds); one runs the real module through the CLI on the tiny
Qwen2-VL replica (``slow``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from fit_helpers import PoisonModule, fit_args, guarded_trainer, id_loader

from vlm_lightning.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError

FUSED = pytest.mark.parametrize("fused", [False, True], ids=["sync", "deferred"])


@FUSED
def test_nonfinite_stop_names_step_and_batch_ids_and_keeps_last_good_checkpoint(
    tmp_path: Path, fused: bool
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_last=True, save_top_k=0)
    model = PoisonModule(poison_steps=(3,), fused=fused)
    trainer = guarded_trainer(tmp_path, NonFiniteGuard(action="stop"), callbacks=[ckpt])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(model, id_loader())
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
    model = PoisonModule(poison_steps=(2,), fused=fused)
    guard = NonFiniteGuard(action="skip")
    trainer = guarded_trainer(tmp_path, guard, max_steps=5)
    with pytest.warns(UserWarning, match=r"global step 2 .*batch ids \['s8', 's9', 's10', 's11'\].*skipped"):
        trainer.fit(model, id_loader())
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
    model = PoisonModule(grad_poison_steps=(1,), fused=fused)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite gradient at global step 1 .*\['s4', 's5', 's6', 's7'\]"
    ):
        guarded_trainer(tmp_path, NonFiniteGuard(action="stop")).fit(model, id_loader())
    assert torch.isfinite(model.layer.weight).all()


@FUSED
def test_nonfinite_skip_gives_up_after_max_skips(tmp_path: Path, fused: bool) -> None:
    model = PoisonModule(poison_steps=(1, 2, 3), fused=fused)
    trainer = guarded_trainer(tmp_path, NonFiniteGuard(action="skip", max_skips=2), max_steps=6)
    with pytest.raises(NonFiniteLossError, match="3 consecutive"), pytest.warns(UserWarning):
        trainer.fit(model, id_loader())


def test_deferred_guard_reads_the_flag_one_step_late_without_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deferred verdict of step 2 is read inside step 3, after step 3's backward: no per-step wait."""
    from vlm_lightning.callbacks import nonfinite

    reads: list[tuple[int, int]] = []  # (verdict's step, step being run when it was read)
    model = PoisonModule(poison_steps=(2,), fused=True)
    conclude = nonfinite.NonFiniteGuard._conclude

    def spy(self, trainer, check, optimizer):  # noqa: ANN001, ANN202
        reads.append((check.step, trainer.global_step))
        return conclude(self, trainer, check, optimizer)

    monkeypatch.setattr(nonfinite.NonFiniteGuard, "_conclude", spy)
    guard = NonFiniteGuard(action="skip")
    with pytest.warns(UserWarning, match="global step 2 "):
        guarded_trainer(tmp_path, guard, max_steps=4).fit(model, id_loader())
    assert reads == [(0, 1), (1, 2), (2, 3), (3, 4)]  # the last one at the end of training
    assert torch.equal(model.weights_at[3], model.weights_at[2])
    assert not hasattr(model.trainer.optimizers[0], "found_inf")  # taken off after each step


def test_deferred_guard_refuses_an_optimizer_without_found_inf(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"defer=True.*fused"):
        guarded_trainer(tmp_path, NonFiniteGuard(defer=True)).fit(PoisonModule(), id_loader())


def test_nonfinite_weights_are_never_saved(tmp_path: Path) -> None:
    model = PoisonModule()
    trainer = guarded_trainer(tmp_path, NonFiniteGuard(), max_steps=1)
    trainer.fit(model, id_loader())
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    with torch.no_grad():
        model.layer.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="refusing to save"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists() and (tmp_path / "good.ckpt").is_file()


def test_without_guard_the_nan_reaches_the_weights(tmp_path: Path) -> None:
    """Control: the behaviour above is the guard's doing."""
    model = PoisonModule(poison_steps=(2,))
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, id_loader())
    assert not torch.isfinite(model.layer.weight).all()


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
    args = fit_args(
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
