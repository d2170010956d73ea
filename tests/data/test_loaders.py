"""Loader settings checked against the epoch they make."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vlm_lightning.data.loaders import check_validation_interval
from vlm_lightning.errors import SettingError


def _trainer(
    interval: float | int,
    every: int | None = 1,
    limit: float | int = 1.0,
    max_steps: int = -1,
    max_epochs: int | None = None,
    accumulate: int = 1,
) -> SimpleNamespace:
    return SimpleNamespace(
        val_check_interval=interval,
        check_val_every_n_epoch=every,
        limit_val_batches=1.0,
        limit_train_batches=limit,
        max_steps=max_steps,
        max_epochs=max_epochs,
        accumulate_grad_batches=accumulate,
    )


def test_a_batch_interval_beyond_the_epoch_is_refused_with_the_numbers() -> None:
    with pytest.raises(
        SettingError, match=r"val_check_interval 80 is more than the 6 training batches.*or less"
    ):
        check_validation_interval(_trainer(80), 6)
    with pytest.raises(SettingError, match="the 3 training batches"):
        check_validation_interval(_trainer(5, limit=3), 6)  # limit_train_batches shortens the epoch
    check_validation_interval(_trainer(6), 6)  # the last batch of the epoch: fine
    check_validation_interval(_trainer(0.5), 6)  # a fraction of an epoch
    check_validation_interval(_trainer(80, every=None), 6)  # counted across epochs


def test_an_interval_across_epochs_beyond_the_whole_run_is_refused() -> None:
    """Counted across epochs, an interval the run never reaches would train without validating, silently."""
    with pytest.raises(
        SettingError, match=r"val_check_interval 50 \(counted across epochs\) is more than the 8 "
    ):
        check_validation_interval(_trainer(50, every=None, max_steps=4, accumulate=2), 2)
    with pytest.raises(SettingError, match=r"the 6 training batches of this whole run.*interval 6 or less"):
        check_validation_interval(_trainer(50, every=None, max_epochs=3), 2)
    with pytest.raises(SettingError, match=r"the 1 training batch of an epoch: "):
        check_validation_interval(_trainer(2), 1)
    check_validation_interval(_trainer(8, every=None, max_steps=4, accumulate=2), 2)  # the run's last batch
    check_validation_interval(_trainer(50, every=None), 2)  # no bound on the run: nothing to check


def test_an_interval_inside_an_accumulation_window_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="vlm_lightning.data.loaders"):
        check_validation_interval(_trainer(3, accumulate=2), 6)
    assert "val_check_interval 3 counts batches, not optimizer steps" in caplog.text
    assert "set a multiple of 2 (e.g. 2)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vlm_lightning.data.loaders"):
        check_validation_interval(_trainer(4, accumulate=2), 6)
    assert caplog.text == ""
