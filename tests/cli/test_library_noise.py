"""Library noise is silenced by exact messages only; LoRA targets matching no layer are one clear error."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from vlm_lightning.cli.library_noise import SILENCED_WARNINGS, quiet_libraries
from vlm_lightning.errors import SettingError
from vlm_lightning.models.peft_setup import _check_targets_match

EXAMPLES = {
    0: "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
    1: "You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a "
    "`LightningDataModule`. It will use the implementation from `LightningModule` instance.",
    2: "Total length of `list` across ranks is zero. Please make sure this was your intention.",
    3: "`is_gradient_checkpointing` is deprecated",
    4: "The dirpath has changed from 'a' to 'b', therefore `best_model_score`, `kth_best_model_path` ...",
    5: "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided during "
    "`Trainer` instantiation. Please add the following callbacks: [\"RunCheckpoint{'monitor': None, 'mode': "
    "'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, 'train_time_interval': None}\"].",
}


def test_each_entry_matches_its_message_and_not_a_neighbour() -> None:
    assert len(EXAMPLES) == len(SILENCED_WARNINGS)
    for i, (pattern, reason) in enumerate(SILENCED_WARNINGS):
        assert reason and re.match(pattern, EXAMPLES[i]), pattern
    # Lightning's sync_dist advice is not muted: epoch values are logged with sync_dist (evaluation_steps)
    assert not any(
        re.match(p, "Total length of `DataLoader` across ranks is zero") for p, _ in SILENCED_WARNINGS
    )
    assert not any(re.match(p, "It is recommended to use `self.log('val/loss', ..., sync_dist=True)`")
                   for p, _ in SILENCED_WARNINGS)  # fmt: skip
    other = EXAMPLES[5].replace('"RunCheckpoint{', '"EarlyStopping{')  # another missing callback: still said
    assert not any(re.match(p, other) for p, _ in SILENCED_WARNINGS)
    both = EXAMPLES[5].replace('"]', '", "EarlyStopping{}"]')
    assert not any(re.match(p, both) for p, _ in SILENCED_WARNINGS)


def test_quiet_libraries_hides_listed_and_keeps_other_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        quiet_libraries()  # idempotent
        warnings.warn(EXAMPLES[1], UserWarning, stacklevel=1)
        warnings.warn("something new from a library", UserWarning, stacklevel=1)
    texts = [str(w.message) for w in caught]
    assert texts == ["something new from a library"]


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.language_model = torch.nn.Module()
        self.language_model.q_proj = torch.nn.Linear(2, 2)


def test_lora_targets_matching_no_layer_are_a_setting_error() -> None:
    _check_targets_match(_Toy(), r".*q_proj", ".*q_proj")
    with pytest.raises(SettingError, match="matches no linear layer of this model.*language_model.q_proj"):
        _check_targets_match(_Toy(), r".*\.k_proj", r".*\.k_proj")
    with pytest.raises(SettingError, match="is not a valid regex"):
        _check_targets_match(_Toy(), r"(", r"(")
