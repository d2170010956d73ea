"""Steady-state statistics of the per-rank loop profiler."""

import pytest

from vlm_lightning.training.profiling import SteadyStateProfiler, steady_stats


def test_steady_stats_leave_out_warmup() -> None:
    stats = steady_stats([9.0, 0.004, 0.001, 0.002, 0.003], skip=1)
    assert stats == {
        "calls": 4,
        "median_ms": pytest.approx(2.5),
        "p90_ms": pytest.approx(4.0),
        "max_ms": pytest.approx(4.0),
        "total_s": pytest.approx(0.010),
    }
    assert steady_stats([0.5, 0.1, 0.3], skip=0)["median_ms"] == pytest.approx(300.0)
    assert steady_stats([1.0], skip=1) is None


def test_report_orders_by_total_and_drops_warmup_only_actions() -> None:
    profiler = SteadyStateProfiler(skip=1)
    profiler.recorded_durations.update(
        {"setup": [5.0], "fast": [1.0, 0.001, 0.001], "slow": [1.0, 0.01, 0.02]}
    )
    assert list(profiler.report()) == ["slow", "fast"]
    assert "slow" in profiler.summary()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="skip >= 0"):
        SteadyStateProfiler(skip=-1)
