"""Throughput counts the samples trained on: the packed sampler's fillers (DDP ranks kept in step) are not."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vlm_lightning.callbacks.throughput import Throughput
from vlm_lightning.data.sampling import FILLER


def test_fillers_count_as_neither_samples_nor_tokens() -> None:
    meter = Throughput(warmup_steps=0)
    trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    packed = {"ids": ["a", "b", "a"], "meta": [{}, {}, {FILLER: True}], "real_tokens": 30}
    meter.on_train_batch_end(trainer, None, None, packed, 0)  # starts the clock
    trainer.global_step = 1
    meter.on_train_batch_end(trainer, None, None, packed, 1)
    fillers_only = {"ids": ["a"], "meta": [{FILLER: True}], "real_tokens": 0}
    meter.on_train_batch_end(trainer, None, None, fillers_only, 2)
    assert meter._samples == 2 and meter._tokens == 30
    padded = {
        "ids": ["c", "d"],
        "meta": [{}, {}],
        "inputs": {"attention_mask": torch.tensor([[1, 1], [1, 0]])},
    }
    meter.on_train_batch_end(trainer, None, None, padded, 3)
    assert meter._samples == 4 and int(meter._tokens) == 33
