"""One gradient norm per optimizer step: the guard's (before the token-mean rescale) times the rescale
factor is what the trainer logs and clips with; clipping matches torch's ``clip_grad_norm_``."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from fit_helpers import lora_module, repeated_batch_loader
from fixtures_data import chat_batch

from vlm_lightning.callbacks.nonfinite import NonFiniteGuard


class _RecordClipping(L.Callback):
    """Gradients as clipping receives them (after the module's hook) and as the optimizer steps them."""

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.after.append([p.grad.clone() for p in pl_module.parameters() if p.grad is not None])


def _fit(path: str, clip: float | None, guard: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    module = lora_module(path)
    record = _RecordClipping()
    clipping = module.configure_gradient_clipping

    def recorded_clipping(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:  # noqa: ANN001
        record.before.append([p.grad.clone() for p in module.parameters() if p.grad is not None])
        clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    monkeypatch.setattr(module, "configure_gradient_clipping", recorded_clipping)
    norms_computed = []
    total_norm = torch.nn.utils.get_total_norm

    def counted(*args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        norms_computed.append(1)
        return total_norm(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted)
    logged: list[float] = []

    class LogNorm(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            logged.append(float(trainer.callback_metrics["train/grad_norm"]))

    callbacks = [record, LogNorm()] + ([NonFiniteGuard(defer=False)] if guard else [])
    trainer = L.Trainer(
        accelerator="cpu",
        gradient_clip_val=clip,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, train_dataloaders=repeated_batch_loader(chat_batch(path), 2))
    return record, len(norms_computed), logged


@pytest.mark.parametrize("guard", [True, False])
def test_one_norm_per_step_logged_and_clipped_as_torch_does(tiny_replica, monkeypatch, guard) -> None:  # noqa: ANN001
    record, n_norms, logged = _fit(str(tiny_replica("qwen2_vl")), 1e-3, guard, monkeypatch)
    assert n_norms == 2  # one per optimizer step, guard or not
    assert len(record.before) == len(record.after) == len(logged) == 2
    for before, after, norm in zip(record.before, record.after, logged, strict=True):
        expected = [g.clone() for g in before]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in expected]
        for p, g in zip(params, expected, strict=True):
            p.grad = g
        torch_norm = torch.nn.utils.clip_grad_norm_(params, 1e-3, foreach=True)
        assert norm == pytest.approx(float(torch_norm), rel=1e-5)  # the norm before clipping
        assert norm > 1e-3
        for got, want in zip(after, (p.grad for p in params), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


def test_logged_norm_without_clipping_is_the_norm_of_the_stepped_gradients(tiny_replica, monkeypatch) -> None:  # noqa: ANN001
    record, n_norms, logged = _fit(str(tiny_replica("qwen2_vl")), None, True, monkeypatch)
    assert n_norms == 2 and len(record.after) == 2
    for after, norm in zip(record.after, logged, strict=True):
        assert norm == pytest.approx(
            float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in after]))), rel=1e-5
        )
