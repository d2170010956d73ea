"""The data module's settings checked against each other when it is made: a SettingError names the setting."""

from __future__ import annotations

from vlm_lightning.errors import SettingError


def check_data_settings(
    *,
    batch_size: int,
    eval_batch_size: int | None,
    packing: bool,
    max_tokens_per_row: int | None,
    check_lengths: bool,
    group_by_length: bool | None,
    max_cut_fraction: float,
) -> None:
    """Refuse sizes below 1 and combinations that cannot work, before any data is read."""
    sizes = {
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "max_tokens_per_row": max_tokens_per_row,
    }
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise SettingError(f"data.{name} must be >= 1, got {value}")
    if max_tokens_per_row is not None and not packing:
        raise SettingError(
            "data.max_tokens_per_row is set but data.packing is false: set --data.packing true "
            "(or remove data.max_tokens_per_row)"
        )
    if packing and not check_lengths:
        raise SettingError(
            "data.packing needs the sample lengths to fill its rows: keep data.check_lengths true"
        )
    if group_by_length and not check_lengths:
        raise SettingError(
            "data.group_by_length needs the sample lengths: keep data.check_lengths true "
            "(or set data.group_by_length false)"
        )
    if not 0.0 <= max_cut_fraction <= 1.0:
        raise SettingError(f"data.max_cut_fraction must be within [0, 1], got {max_cut_fraction}")


__all__ = ["check_data_settings"]
