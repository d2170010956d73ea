"""Profile a few steady-state training steps with ``torch.profiler``: where a slow run spends its time.

    python -m vlm_lightning fit --config ... \
        --trainer.callbacks+=vlm_lightning.callbacks.step_profile.StepProfiler \
        --trainer.callbacks.start_step=60 --trainer.callbacks.steps=5

Writes ``<run>/step_profile.txt`` (operators by device time, then by host time, and the wall, host and
device time per step) and ``<run>/step_profile.json`` (a Chrome / Perfetto trace) on rank 0. Profiling slows
the recorded steps and writing the report takes seconds inside the training loop, so the run's
``throughput.json`` is not a clean measurement when this callback is on.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from vlm_lightning.callbacks.step_window import StepWindow
from vlm_lightning.errors import SettingError


class StepProfiler(StepWindow):
    """Record optimizer steps ``start_step`` .. ``start_step + steps`` (after compilation and warm-up).

    Args:
        start_step: first profiled optimizer step (leave compilation and allocator growth behind).
        steps: how many optimizer steps to record.
        rows: operators listed per table.
        trace: also write the Chrome trace (can be tens of MB).
    """

    def __init__(self, start_step: int = 50, steps: int = 5, rows: int = 30, trace: bool = True) -> None:
        if start_step < 0 or steps < 1 or rows < 1:
            raise SettingError(
                f"StepProfiler needs start_step >= 0, steps >= 1 and rows >= 1; got start_step={start_step}, "
                f"steps={steps}, rows={rows}"
            )
        super().__init__(start_step, steps)
        self.rows = rows
        self.trace = trace
        self._profiler: torch.profiler.profile | None = None
        self._started_at = 0.0
        self.report_path: Path | None = None

    def begin(self, trainer: L.Trainer) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()
        self._started_at = time.perf_counter()

    def end(self, trainer: L.Trainer, first_step: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._started_at
        steps = max(1, trainer.global_step - first_step)
        profiler, self._profiler = self._profiler, None
        assert profiler is not None
        profiler.__exit__(None, None, None)
        events = profiler.key_averages()
        kernels = [
            e
            for e in events
            if e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False)
        ]
        device_us = sum(e.self_device_time_total for e in kernels)
        host_us = sum(e.self_cpu_time_total for e in events)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"steps {first_step}..{trainer.global_step} ({steps} optimizer steps)",
            f"wall per step {1000 * wall / steps:.1f} ms; device (kernel) time per step "
            f"{device_us / 1000 / steps:.1f} ms; host operator time per step {host_us / 1000 / steps:.1f} ms",
            "",
            "by device time:",
            events.table(sort_by="self_device_time_total", row_limit=self.rows),
            "",
            "by host time:",
            events.table(sort_by="self_cpu_time_total", row_limit=self.rows),
        ]
        self.report_path = folder / "step_profile.txt"
        self.report_path.write_text("\n".join(lines) + "\n")
        if self.trace:
            profiler.export_chrome_trace(str(folder / "step_profile.json"))
        print(f"[vlm_lightning] step profile: {self.report_path} ({lines[1]})")
