"""Loader settings checked against the epoch they make."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vlm_lightning.data.loaders import check_validation_interval
from vlm_lightning.errors import SettingError


def _trainer(interval: float | int, every: int | None = 1, limit: float | int = 1.0) -> SimpleNamespace:
    return SimpleNamespace(
        val_check_interval=interval,
        check_val_every_n_epoch=every,
        limit_val_batches=1.0,
        limit_train_batches=limit,
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
