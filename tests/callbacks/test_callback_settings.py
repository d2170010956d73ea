"""Settings of the profiling and preemption callbacks are checked when they are built."""

from __future__ import annotations

import pytest

from vlm_lightning.callbacks.preemption import PreemptionCheckpoint
from vlm_lightning.callbacks.step_profile import StepProfiler


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"start_step": -1}, {"rows": 0}])
def test_step_profiler_refuses_empty_or_negative_windows(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="StepProfiler needs start_step >= 0, steps >= 1"):
        StepProfiler(**kwargs)


def test_preemption_refuses_a_zero_check_interval() -> None:
    with pytest.raises(ValueError, match="ddp_check_every_n_batches must be >= 1, got 0"):
        PreemptionCheckpoint(ddp_check_every_n_batches=0)
    assert PreemptionCheckpoint(ddp_check_every_n_batches=3).ddp_check_every_n_batches == 3
