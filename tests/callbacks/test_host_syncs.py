"""HostSyncReport: the synchronising operations of the chosen steps, counted per Python line."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from vlm_lightning.callbacks import host_syncs
from vlm_lightning.callbacks.host_syncs import HostSyncReport


class _Syncing(L.LightningModule):
    """Emits torch's sync-debug warning twice per step from one line (as CUDA ops would)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        for _ in range(2):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)  # reported line
        warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_counts_sync_sites_of_the_window_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[str] = []
    monkeypatch.setattr(host_syncs, "_cuda", lambda: True)
    monkeypatch.setattr(host_syncs, "_set_sync_debug_mode", modes.append)
    report = HostSyncReport(start_step=2, steps=3)
    trainer = L.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[report],
    )
    data = torch.utils.data.TensorDataset(torch.randn(16, 2))
    filters, handler = list(warnings.filters), warnings.showwarning
    with pytest.warns(UserWarning) as shown:  # the steps outside the window warn as usual
        trainer.fit(_Syncing(), torch.utils.data.DataLoader(data, batch_size=2))
    assert warnings.filters == filters and warnings.showwarning is handler  # the warning state as before
    assert (
        sum("unrelated" in str(w.message) for w in shown) == 8
    )  # other warnings: shown inside the window too
    assert sum("synchronizing" in str(w.message) for w in shown) == 2 * (8 - 3)  # counted, not shown, inside
    assert modes == ["warn", "default"]
    text = report.report_path.read_text()
    assert text.startswith("steps 2..5: 2.0 host syncs per optimizer step")
    ((site, count),) = [(k, v) for k, v in report.sites.items()]
    assert site[0].endswith("test_host_syncs.py") and count == 6


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="start_step >= 0 and steps >= 1"):
        HostSyncReport(steps=0)
