"""MemoryPeakReport: the allocator-history replay (hand-written and recorded traces) and its settings."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from vlm_lightning.callbacks.memory_peak import (
    GIB,
    MemoryPeakReport,
    allocation_site,
    find_peak,
    in_backward,
    peak_report,
)
from vlm_lightning.errors import SettingError

RECORDED = Path(__file__).with_name("lfm2_recompute_memory_snapshot.pickle.gz")


def frame(name: str, filename: str, line: int) -> dict:
    return {"name": name, "filename": filename, "line": line}


def test_find_peak_replays_allocations_and_frees_from_the_bytes_held_before() -> None:
    model = frame("forward", "/src/model.py", 10)
    snapshot = {
        # at the end: a block held since before the recording (1,000), B and C
        "segments": [{"device": 0, "blocks": [
            {"size": 1000, "state": "active_allocated"},
            {"size": 50, "state": "active_allocated"},
            {"size": 30, "state": "active_allocated"},
            {"size": 400, "state": "inactive"},
        ]}],
        "device_traces": [[
            {"action": "alloc", "addr": 1, "size": 100, "frames": [model]},  # A
            {"action": "alloc", "addr": 2, "size": 50, "frames": [model]},  # B: peak 1,150
            {"action": "free_requested", "addr": 1, "size": 100, "frames": []},
            {"action": "free_completed", "addr": 1, "size": 100, "frames": []},
            {"action": "alloc", "addr": 3, "size": 30, "frames": []},  # C: 1,080
        ]],
    }  # fmt: skip
    peak = find_peak(snapshot)
    assert peak.before_bytes == 1000
    assert peak.peak_bytes == 1150 and peak.peak_event == 1 and peak.events == 5
    assert sorted(e["addr"] for e in peak.live_at_peak) == [1, 2]


def test_allocation_sites_skip_torch_and_mark_compiled_graphs() -> None:
    event = {"frames": [
        frame("call", "/tmp/torchinductor_root/5j/c5jb.py", 1814),
        frame("forward", "/tmp/site/peft/tuners/lora/layer.py", 1102),
        frame("_fn", "/opt/x/lib/python3.12/site-packages/torch/_dynamo/eval_frame.py", 1263),
        frame("forward", "/opt/torch/.venv/lib/python3.12/site-packages/transformers/models/lfm2/modeling_lfm2.py", 128),
        frame("_backward_impl", "/opt/x/lib/python3.12/site-packages/torch/_functorch/runtime_wrappers.py", 2918),
    ]}  # fmt: skip
    # transformers under a folder named "torch" is not torch itself
    assert allocation_site(event) == "(compiled) forward@layer.py:1102 < forward@modeling_lfm2.py:128"
    assert in_backward(event)
    assert allocation_site({"frames": []}) == "(no Python frame)" and not in_backward({"frames": []})


def test_the_replay_matches_torch_on_a_recorded_lfm2_step() -> None:
    """A history recorded on an H200 (LFM2-VL-1.6B, ``fit --model.gradient_checkpointing true``, before the MLPs
    were sliced): torch's own ``max_memory_allocated`` over the recording was 4.81533 GiB."""
    snapshot = pickle.loads(gzip.decompress(RECORDED.read_bytes()))
    peak = find_peak(snapshot)
    assert peak.peak_bytes / GIB == pytest.approx(4.81533, abs=1e-3)
    assert peak.before_bytes / GIB == pytest.approx(3.239, abs=1e-3)
    lines = peak_report(peak, rows=3)
    assert lines[0] == "peak allocated 4.815 GiB"
    assert "reached in the backward" in lines[3] and "forward@modeling_lfm2.py:128" in lines[3]  # the MLP
    top = lines[-3]  # the largest site: the MLP's LoRA projections inside the compiled layer
    assert "(compiled) forward@layer.py:1102 < forward@modeling_lfm2.py:128" in top
    assert float(top.split()[0]) > 500  # MiB
    assert len(lines) == 3 + 1 + 2 + 3


def test_a_history_that_hit_its_limit_is_flagged() -> None:
    snapshot = {
        "segments": [],
        "device_traces": [[{"action": "alloc", "addr": i, "size": 1} for i in range(5)]],
    }
    text = "\n".join(peak_report(find_peak(snapshot), max_entries=5))
    assert "WARNING: the history holds 5 events" in text


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"start_step": -1}, {"rows": 0}, {"max_entries": 10}])
def test_settings_out_of_range_are_refused(kwargs: dict) -> None:
    with pytest.raises(SettingError, match="MemoryPeakReport needs start_step >= 0"):
        MemoryPeakReport(**kwargs)


def test_a_cpu_run_is_refused_before_training(tmp_path: Path) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(SettingError, match="records the CUDA allocator, but this run trains on cpu"):
        MemoryPeakReport().setup(trainer, L.LightningModule(), "fit")


def test_the_callback_records_its_window_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hooks' flow with torch's CUDA calls stood in for (the GPU test runs them for real): recording starts
    at ``start_step``, stops after ``steps`` optimizer steps, and the report holds the replayed snapshot."""
    calls: list[object] = []
    snapshot = pickle.loads(gzip.decompress(RECORDED.read_bytes()))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: int(4.81533 * GIB))
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", lambda *a: snapshot)
    monkeypatch.setattr(
        torch.cuda.memory, "_record_memory_history", lambda *a, **kw: calls.append(kw.get("enabled", "on"))
    )
    trainer = SimpleNamespace(
        global_step=0, global_rank=0, log_dir=str(tmp_path), default_root_dir=str(tmp_path)
    )
    callback = MemoryPeakReport(start_step=3, steps=2, keep_snapshot=True)
    for step in range(8):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, None, step)
        if step == 3:
            assert calls == ["reset", "on"]
        trainer.global_step = step + 1  # the optimizer step of this batch has run
        callback.on_train_batch_end(trainer, None, None, None, step)
    assert calls == ["reset", "on", None]  # recorded once, then switched off
    text = (tmp_path / "memory_peak.txt").read_text()
    assert text.startswith(
        "optimizer steps 3..5 on cuda:0; torch.cuda.max_memory_allocated over them: 4.815 GiB"
    )
    assert "peak allocated 4.815 GiB" in text and (tmp_path / "memory_peak.pickle").is_file()
