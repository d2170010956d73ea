"""A resumed run with another length trains on its own learning-rate schedule from the first resumed step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import get_scheduler

from vlm_lightning.training.checkpoint_state import follow_this_runs_schedule


def _cosine(steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    return optimizer, get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=steps)


def test_a_longer_resumed_run_takes_its_own_cosine_at_the_restored_step() -> None:
    optimizer, scheduler = _cosine(6)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the 6-step cosine's end
    saved = optimizer.state_dict(), scheduler.state_dict()
    optimizer, scheduler = _cosine(12)  # resumed with max_steps 12: Lightning restores both states
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    changed = follow_this_runs_schedule(trainer)
    half = 1e-3 * 0.5 * (1 + math.cos(math.pi * 6 / 12))
    assert changed == [(pytest.approx(0.0, abs=1e-12), pytest.approx(half))]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(half) and scheduler.get_last_lr() == [
        pytest.approx(half)
    ]
    assert follow_this_runs_schedule(trainer) == []  # the same length: nothing moves


def test_an_equal_length_resume_and_other_schedulers_are_left_alone() -> None:
    optimizer, scheduler = _cosine(6)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert (
        follow_this_runs_schedule(
            SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
        )
        == []
    )
    step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    assert (
        follow_this_runs_schedule(SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=step)]))
        == []
    )
    assert follow_this_runs_schedule(SimpleNamespace()) == []
