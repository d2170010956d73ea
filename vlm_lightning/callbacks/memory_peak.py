"""Where a training step's peak GPU memory goes: the tensors live at the peak, by the source lines that made them.

    python -m vlm_lightning fit --config ... \
        --trainer.callbacks+=vlm_lightning.callbacks.memory_peak.MemoryPeakReport \
        --trainer.callbacks.start_step=5 --trainer.callbacks.steps=2

Records the CUDA caching allocator's history (``torch.cuda.memory._record_memory_history``, Python stacks) over
optimizer steps ``start_step`` .. ``start_step + steps``, replays its allocations and frees to the highest point,
and writes ``<run>/memory_peak.txt`` on rank 0: the peak, what was allocated before the recording started (the
weights, optimizer state and anything else kept across steps), and the blocks live at the peak grouped by the
first source lines outside torch that allocated them (compiled layers show their original lines). Recording
slows the recorded steps; ``keep_snapshot`` also writes the raw snapshot (``memory_peak.pickle``) for PyTorch's
viewer at https://pytorch.org/memory_viz.
"""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vlm_lightning.callbacks.step_window import StepWindow
from vlm_lightning.errors import SettingError

MIB = 2**20
GIB = 2**30
TORCH_DIR = str(Path(torch.__file__).parent) + "/"


@dataclass
class MemoryPeak:
    """The highest point of a recorded allocator history and what was live there."""

    before_bytes: int  # allocated when the recording started
    peak_bytes: int
    peak_event: int  # index in the trace of the allocation that reached the peak (-1: none did)
    events: int
    #: the trace's allocations since the start that were live at the peak (each with its trace ``index``)
    live_at_peak: list[dict[str, Any]] = field(default_factory=list)


def _allocated_at_snapshot(snapshot: dict[str, Any], device: int) -> int:
    return sum(
        block["size"]
        for segment in snapshot["segments"]
        if segment.get("device", device) == device
        for block in segment["blocks"]
        if block["state"] == "active_allocated"
    )


def find_peak(snapshot: dict[str, Any], device: int = 0) -> MemoryPeak:
    """Replay ``snapshot``'s allocator trace for ``device`` to its highest allocated total.

    The bytes allocated before the recording are the snapshot's allocated blocks minus the trace's net growth;
    a block counts as freed when the allocator can reuse it (``free_completed``), as ``max_memory_allocated``
    counts it.
    """
    trace = snapshot["device_traces"][device] if device < len(snapshot["device_traces"]) else []
    net = 0
    sizes: dict[int, int] = {}
    for event in trace:
        if event["action"] == "alloc":
            sizes[event["addr"]] = event["size"]
            net += event["size"]
        elif event["action"] == "free_completed":
            net -= sizes.pop(event["addr"], event["size"])
    before = _allocated_at_snapshot(snapshot, device) - net
    current, peak, peak_event = before, before, -1
    live: dict[int, dict[str, Any]] = {}
    peak_live: list[dict[str, Any]] = []
    for index, event in enumerate(trace):
        if event["action"] == "alloc":
            live[event["addr"]] = {**event, "index": index}
            current += event["size"]
            if current > peak:
                peak, peak_event, peak_live = current, index, list(live.values())
        elif event["action"] == "free_completed":
            gone = live.pop(event["addr"], None)
            current -= gone["size"] if gone is not None else event["size"]
    return MemoryPeak(before, peak, peak_event, len(trace), peak_live)


def _in_torch(filename: str) -> bool:
    """A frame of torch itself (not of code torch generated)."""
    return filename.startswith(TORCH_DIR) or any(f"{d}-packages/torch/" in filename for d in ("site", "dist"))


def _generated(filename: str) -> bool:
    """A frame of inductor's generated code (its cache folder), whose line numbers mean nothing to a user."""
    return "torchinductor" in filename


def allocation_site(event: dict[str, Any], depth: int = 4) -> str:
    """The first ``depth`` frames of an allocation outside torch, innermost first, as ``function@file:line``.

    Allocations inside a compiled graph carry the original source lines of the traced operation; they are
    marked ``(compiled)``. ``(no Python frame)`` for allocations made outside Python.
    """
    frames = event.get("frames", [])
    compiled = any(_generated(f["filename"]) for f in frames)
    kept = [f for f in frames if not _in_torch(f["filename"]) and not _generated(f["filename"])]
    sites = [f"{f['name']}@{Path(f['filename']).name}:{f['line']}" for f in kept[:depth]]
    text = " < ".join(sites) or "(no Python frame)"
    return f"(compiled) {text}" if compiled else text


def in_backward(event: dict[str, Any]) -> bool:
    """Whether the allocation was made while autograd ran a backward (compiled or eager)."""
    return any("backward" in f["name"] for f in event.get("frames", []))


def peak_report(peak: MemoryPeak, rows: int = 20, max_entries: int | None = None) -> list[str]:
    """Lines of ``memory_peak.txt`` for ``peak``."""
    by_site: Counter[str] = Counter()
    blocks: Counter[str] = Counter()
    for event in peak.live_at_peak:
        site = allocation_site(event)
        by_site[site] += event["size"]
        blocks[site] += 1
    grown = peak.peak_bytes - peak.before_bytes
    lines = [
        f"peak allocated {peak.peak_bytes / GIB:.3f} GiB",
        f"allocated before the recording (weights, optimizer state, tensors kept across steps): "
        f"{peak.before_bytes / GIB:.3f} GiB",
        f"allocated since, live at the peak: {grown / GIB:.3f} GiB in {len(peak.live_at_peak)} blocks",
    ]
    if peak.peak_event >= 0:
        last = next(e for e in peak.live_at_peak if e.get("index") == peak.peak_event)
        phase = "backward" if in_backward(last) else "forward or elsewhere"
        lines.append(f"the peak was reached in the {phase}, at: {allocation_site(last)}")
    if max_entries is not None and peak.events >= max_entries:
        lines.append(
            f"WARNING: the history holds {peak.events} events, its limit: older events were dropped, so the "
            "split above is unreliable (record fewer steps)"
        )
    lines += ["", "    MiB  blocks  allocated at (innermost frame first)"]
    for site, size in by_site.most_common(rows):
        lines.append(f"{size / MIB:7.1f}  {blocks[site]:6d}  {site}")
    return lines


class MemoryPeakReport(StepWindow):
    """Record the allocator history over optimizer steps ``start_step`` .. ``start_step + steps`` (CUDA only).

    Args:
        start_step: first recorded optimizer step (leave compilation and allocator growth behind).
        steps: how many optimizer steps to record.
        rows: allocation sites listed.
        keep_snapshot: also write the raw snapshot for PyTorch's memory viewer.
        max_entries: the history's length limit (events beyond it drop the oldest).
    """

    def __init__(
        self,
        start_step: int = 5,
        steps: int = 2,
        rows: int = 20,
        keep_snapshot: bool = False,
        max_entries: int = 1_000_000,
    ) -> None:
        if start_step < 0 or steps < 1 or rows < 1 or max_entries < 1000:
            raise SettingError(
                f"MemoryPeakReport needs start_step >= 0, steps >= 1, rows >= 1 and max_entries >= 1000; got "
                f"start_step={start_step}, steps={steps}, rows={rows}, max_entries={max_entries}"
            )
        super().__init__(start_step, steps)
        self.rows = rows
        self.keep_snapshot = keep_snapshot
        self.max_entries = max_entries
        self.report_path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.strategy.root_device.type != "cuda":
            raise SettingError(
                f"MemoryPeakReport records the CUDA allocator, but this run trains on "
                f"{trainer.strategy.root_device.type}: run it with --trainer.accelerator gpu, or drop the callback"
            )

    def begin(self, trainer: L.Trainer) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.memory._record_memory_history(max_entries=self.max_entries, stacks="python")

    def end(self, trainer: L.Trainer, first_step: int) -> None:
        torch.cuda.synchronize()
        device = torch.cuda.current_device()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        measured = torch.cuda.max_memory_allocated(device)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        peak = find_peak(snapshot, device)
        lines = [
            f"optimizer steps {first_step}..{trainer.global_step} on cuda:{device}; "
            f"torch.cuda.max_memory_allocated over them: {measured / GIB:.3f} GiB",
            *peak_report(peak, self.rows, self.max_entries),
        ]
        self.report_path = folder / "memory_peak.txt"
        self.report_path.write_text("\n".join(lines) + "\n")
        if self.keep_snapshot:
            with (folder / "memory_peak.pickle").open("wb") as fh:
                pickle.dump(snapshot, fh)
        print(f"[vlm_lightning] memory peak: {self.report_path} ({lines[1]})")
