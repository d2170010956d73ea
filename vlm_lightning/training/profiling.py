"""Host-time profile of the steady-state training loop, per rank: which part of a step waits.

    python -m vlm_lightning fit --config ... --trainer.profiler vlm_lightning.training.profiling.SteadyStateProfiler \
        --trainer.profiler.skip 40 --trainer.profiler.dirpath runs/prof --trainer.profiler.filename steady

Lightning's ``SimpleProfiler`` times every loop action and hook (fetching the next batch, the training
step, backward, each callback's hooks, the optimizer step) on every rank; its report gives means over the
whole run, so compilation and allocator warm-up in the first steps dominate them. This subclass leaves out
the first ``skip`` calls of each action and reports the median, 90th percentile, maximum and total of the
rest, in ``<dirpath>/<stage>-<filename>-<rank>.txt`` (a table) and ``.json`` (the same numbers). It adds
``step_period``: the time from one ``run_training_batch`` start to the next, i.e. the real step time,
including what runs between batches outside any profiled action (Lightning's logger converting logged
tensors to floats, a host sync, at every ``log_every_n_steps``).

Times are host times: a host sync (``.item()``, a non-finite check, logging tensors as floats) shows up as a
long action that waits for the GPU, and under DDP for the slowest rank's all-reduce. The timing itself
costs a ``perf_counter`` pair per action (microseconds).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.profilers import SimpleProfiler

from vlm_lightning.errors import SettingError


def steady_stats(durations: list[float], skip: int) -> dict[str, float] | None:
    """Calls, median / p90 / max in ms and total in s of ``durations`` after the first ``skip``."""
    kept = sorted(durations[skip:])
    if not kept:
        return None
    n = len(kept)
    return {
        "calls": n,
        "median_ms": 1000 * kept[(n - 1) // 2] if n % 2 else 500 * (kept[n // 2 - 1] + kept[n // 2]),
        "p90_ms": 1000 * kept[min(n - 1, math.ceil(0.9 * n) - 1)],
        "max_ms": 1000 * kept[-1],
        "total_s": math.fsum(kept),
    }


STEP_ACTION = "run_training_batch"
PERIOD_ACTION = "step_period"


class SteadyStateProfiler(SimpleProfiler):
    """``SimpleProfiler`` without the warm-up: statistics over each action's calls after the first ``skip``.

    Args:
        dirpath: folder for the per-rank reports (default: the trainer's log dir).
        filename: report name stem (``<stage>-<filename>-<rank>.txt`` / ``.json``).
        skip: calls of each action left out at the start (compilation, first shapes).
        rows: actions listed in the text report, longest total first.
    """

    def __init__(
        self, dirpath: str | Path | None = None, filename: str = "steady", skip: int = 20, rows: int = 40
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)  # first: Profiler.__del__ reads its fields
        if skip < 0 or rows < 1:
            raise SettingError(
                f"SteadyStateProfiler needs skip >= 0 and rows >= 1; got skip={skip}, rows={rows}"
            )
        self.skip = skip
        self.rows = rows
        self._last_step_start: float | None = None

    def start(self, action_name: str) -> None:
        super().start(action_name)
        if action_name == STEP_ACTION:
            now = self.current_actions[action_name]
            if self._last_step_start is not None:
                self.recorded_durations[PERIOD_ACTION].append(now - self._last_step_start)
            self._last_step_start = now

    def report(self) -> dict[str, dict[str, float]]:
        """Per action: steady-state statistics (actions with no call after ``skip`` are left out)."""
        stats = {a: steady_stats(d, self.skip) for a, d in self.recorded_durations.items()}
        kept = {a: s for a, s in stats.items() if s is not None}
        return dict(sorted(kept.items(), key=lambda item: -item[1]["total_s"]))

    def summary(self) -> str:
        report = self.report()
        stage = f"{self._stage.upper()} " if self._stage else ""
        lines = [f"{stage}steady-state profile (first {self.skip} calls of each action left out)"]
        width = max((len(a) for a in report), default=6)
        lines.append(
            f"{'action':<{width}}  {'calls':>6}  {'median ms':>10}  {'p90 ms':>9}  {'max ms':>9}  {'total s':>8}"
        )
        for action, s in list(report.items())[: self.rows]:
            lines.append(
                f"{action:<{width}}  {s['calls']:>6}  {s['median_ms']:>10.2f}  {s['p90_ms']:>9.2f}  "
                f"{s['max_ms']:>9.2f}  {s['total_s']:>8.3f}"
            )
        self._write_json(report)
        return os.linesep.join(lines) + os.linesep

    def _write_json(self, report: dict[str, dict[str, float]]) -> None:
        if self.dirpath is None:
            return
        path = Path(self.dirpath) / (self._prepare_filename(extension=".json"))
        path.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {"skip": self.skip, "rank": self._local_rank, "actions": report}
        path.write_text(json.dumps(payload, indent=1))
