"""A run says why it stopped and what it trains on."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from fit_helpers import WorseningModule, tensor_loader
from lightning.pytorch.callbacks import EarlyStopping
from tqdm import tqdm

from vlm_lightning.callbacks.progress import announce
from vlm_lightning.callbacks.run_summary import RunSummary


def _fit(tmp_path: Path, capsys: pytest.CaptureFixture, **kwargs) -> str:  # noqa: ANN003
    callbacks = kwargs.pop("callbacks", [])
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        callbacks=[RunSummary(), *callbacks], **kwargs,
    )  # fmt: skip
    trainer.fit(WorseningModule(), tensor_loader(8), tensor_loader(2))
    return capsys.readouterr().out


def test_max_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = _fit(tmp_path, capsys, max_steps=5)
    assert "[vlm_lightning] training stopped: reached trainer.max_steps 5" in out
    assert "[vlm_lightning] fit: 8 optimizer steps per epoch, 5 in all" in out


def test_max_epochs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = _fit(tmp_path, capsys, max_epochs=2)
    assert "training stopped: reached trainer.max_epochs 2 (step 16)" in out


def test_the_total_is_whichever_limit_ends_the_fit_first(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = _fit(tmp_path, capsys, max_steps=30, max_epochs=2)  # 2 epochs of 8 steps end it at step 16
    assert "[vlm_lightning] fit: 8 optimizer steps per epoch, 16 in all" in out
    out = _fit(tmp_path, capsys, max_steps=3, accumulate_grad_batches=8)
    assert "[vlm_lightning] fit: 1 optimizer step per epoch, 3 in all" in out


def test_early_stopping_says_the_monitored_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stop = EarlyStopping(monitor="val/loss", patience=1, mode="min")
    out = _fit(tmp_path, capsys, max_epochs=10, callbacks=[stop])
    assert "training stopped: early stopping at step 16: Monitored metric val/loss did not improve" in out
    assert "Best score: 1.000" in out


def test_early_stopping_at_the_max_steps_step_names_both(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    stop = EarlyStopping(monitor="val/loss", patience=1, mode="min")
    out = _fit(tmp_path, capsys, max_epochs=10, max_steps=16, callbacks=[stop])  # both at step 16
    assert (
        "training stopped: reached trainer.max_steps 16; early stopping fired at the same step: Monitored metric "
        "val/loss did not improve"
    ) in out


@pytest.mark.parametrize("packing", [False, True])
def test_tokens_per_step_are_an_epochs_tokens_over_its_steps(packing: bool) -> None:

    from vlm_lightning.callbacks.run_summary import start_summary

    trainer = SimpleNamespace(
        accumulate_grad_batches=2, num_training_batches=4, max_steps=-1, max_epochs=1, world_size=1
    )
    train = SimpleNamespace(records=[SimpleNamespace(meta={})] * 12, lengths=[100] * 12)
    datamodule = SimpleNamespace(datasets={"train": train}, batch_size=3, hparams={"packing": packing})
    line = start_summary(trainer, datamodule)
    # 12 samples of 100 tokens in 2 optimizer steps: 600 tokens per step (a packed step holds 6 samples)
    expected = "~600 tokens, ~6.0 samples per optimizer step" if packing else "~600 tokens per optimizer step"
    assert "2 optimizer steps per epoch" in line and expected in line, line


def test_the_copies_of_augmentation_are_counted_as_augmented_and_plain() -> None:

    from vlm_lightning.callbacks.run_summary import start_summary
    from vlm_lightning.data.augment import expand_with_copies
    from vlm_lightning.data.records import Record

    rows = [Record(f"r{i}", ["x.png"], [{"role": "user", "content": "Q"}], ["A"]) for i in range(10)]
    records = expand_with_copies(rows, copies=2, p=0.5)
    augmented = sum("augment_key" in r.meta for r in records)
    assert 0 < augmented < 20
    trainer = SimpleNamespace(
        accumulate_grad_batches=1, num_training_batches=30, max_steps=-1, max_epochs=1, world_size=1
    )
    train = SimpleNamespace(records=records, lengths=[10] * 30)
    datamodule = SimpleNamespace(datasets={"train": train}, batch_size=1, hparams={"packing": False})
    line = start_summary(trainer, datamodule)
    assert (
        f"train 30 samples (10 rows + 20 copies: {augmented} augmented, {20 - augmented} plain repeats)"
        in line
    )


def test_announcements_print_on_their_own_line_around_a_drawing_bar(capsys: pytest.CaptureFixture) -> None:
    drawing = tqdm(total=3, file=io.StringIO())  # a bar mid-run (drawn elsewhere)
    announce("[vlm_lightning] training stopped: reached max")
    drawing.close()
    assert capsys.readouterr().out == "[vlm_lightning] training stopped: reached max\n"
    announce("plain")  # no bar at all
    assert capsys.readouterr().out == "plain\n"
