"""Tiny LightningModules, loaders and ``python -m vlm_lightning fit`` arguments shared by several test files.

Imported as a top-level module (``from fit_helpers import ...``): ``pyproject.toml`` puts ``tests/`` on the path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vlm_lightning.callbacks.nonfinite import NonFiniteGuard

# --- a model whose val/loss only gets worse (checkpoint and run-summary callbacks) ----------------


class WorseningModule(L.LightningModule):
    """A linear model whose logged ``val/loss`` only gets worse after the first validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.validations = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validations += 1
        self.log("val/loss", float(self.validations))  # 1, 2, 3, ...: the first is the best

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tensor_loader(n: int) -> DataLoader:
    """``n`` random rows of 2 features, one per batch (for :class:`WorseningModule`)."""
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=1)


# --- a model poisoned on chosen steps (non-finite guard, preemption, secrets) ---------------------


class IdDataset(Dataset):
    def __init__(self, n: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "ids": f"s{i}"}


class InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward (an overflow in backward with a finite loss)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


class PoisonModule(L.LightningModule):
    """Linear regression whose loss is NaN on the optimizer steps listed in ``poison_steps``."""

    def __init__(
        self, poison_steps: tuple[int, ...] = (), grad_poison_steps: tuple[int, ...] = (), fused: bool = False
    ) -> None:
        super().__init__()
        self.fused = fused  # fused AdamW: the guard drops updates on the device and reads flags late
        self.layer = torch.nn.Linear(4, 1)
        self.poison_steps = poison_steps
        self.grad_poison_steps = grad_poison_steps
        self.weights_at: dict[int, torch.Tensor] = {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.weights_at[self.global_step] = self.layer.weight.detach().clone()
        weight = self.layer.weight
        if self.global_step in self.grad_poison_steps:
            weight = InfGrad.apply(weight)
        loss = (batch["x"] @ weight.T + self.layer.bias).pow(2).mean()
        if self.global_step in self.poison_steps:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1, fused=self.fused)


def id_loader() -> DataLoader:
    """16 rows in batches of 4, in order: batch ``b`` holds ids ``s{4b}`` .. ``s{4b + 3}``."""
    return DataLoader(IdDataset(), batch_size=4, shuffle=False)


def guarded_trainer(tmp_path: Path, guard: NonFiniteGuard, max_steps: int = 6, **kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer with ``guard`` first among its callbacks."""
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[guard, *kwargs.pop("callbacks", [])],
        **kwargs,
    )


# --- a real `python -m vlm_lightning fit` on a tiny replica ---------------------------------------


def tiny_cpu_settings(
    model: Path, root: Path, data: dict[str, Path] | None = None, **by_name: object
) -> dict[str, object]:
    """The CLI settings the tiny-replica CLI tests share, by dotted name: CPU, one device, AdamW at lr 0.003,
    batch 4, ``max_length`` 400, 16 image tokens, no progress bar; ``data``'s splits as ``data.<split>``.

    ``by_name`` overrides or adds settings with ``__`` for the dots (``data__batch_size=1``)."""
    settings: dict[str, object] = {
        "model.name_or_path": model,
        "model.optimizer.class_path": "torch.optim.AdamW",
        "model.optimizer.init_args.lr": "0.003",
        **{f"data.{split}": path for split, path in (data or {}).items()},
        "data.batch_size": 4,
        "data.max_length": 400,
        "data.image_max_tokens": 16,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "trainer.default_root_dir": root,
        "trainer.enable_progress_bar": "false",
    }
    settings.update({name.replace("__", "."): value for name, value in by_name.items()})
    return settings


def as_flags(settings: dict[str, object]) -> list[str]:
    """``{"data.batch_size": 4}`` -> ``["--data.batch_size", "4"]``, in the dict's order."""
    return [flag for name, value in settings.items() for flag in (f"--{name}", str(value))]


def fit_args(model: Path, data: dict[str, Path], root: Path, max_steps: int, *extra: str) -> list[str]:
    """``fit`` arguments: batch size 1, a CSV logger writing every step's loss, preemption checkpoints."""
    settings = tiny_cpu_settings(
        model,
        root,
        {"train": data["train"]},
        model__metrics="[exact_match]",
        model__val_generate="false",
        model__scheduler="constant",  # the schedule must not depend on max_steps (runs differ there)
        data__batch_size=1,  # 8 batches per epoch: the signal lands mid-epoch
        trainer__max_steps=max_steps,
        trainer__limit_val_batches=0,
        trainer__log_every_n_steps=1,  # every step's loss, to compare resumed and uninterrupted runs
        trainer__logger="lightning.pytorch.loggers.CSVLogger",
        trainer__logger__init_args__save_dir=root,
        trainer__logger__init_args__name="",
        trainer__logger__init_args__flush_logs_every_n_steps=1,
    )
    return [
        "fit",
        *as_flags(settings),
        "--trainer.callbacks+=vlm_lightning.callbacks.preemption.PreemptionCheckpoint",
        *extra,
    ]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m vlm_lightning <args>`` in ``cwd`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "vlm_lightning", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


def lora_module(path: str, dropout: float = 0.0, dtype: str = "auto") -> Any:
    """A ``VLMFineTuner`` on the replica at ``path`` with r4 LoRA adapters that change the output."""
    from vlm_lightning.models.peft_setup import LoraSettings
    from vlm_lightning.training.module import VLMFineTuner

    torch.manual_seed(0)
    module = VLMFineTuner(
        path, lora=LoraSettings(r=4, alpha=8, dropout=dropout), metrics=["exact_match"], dtype=dtype
    )
    with torch.no_grad():  # non-zero lora_B so the adapters change the output
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return module


def repeated_batch_loader(batch: dict, n: int) -> DataLoader:
    """``n`` steps of the same ready-made batch (no collation)."""
    return DataLoader([batch] * n, batch_size=None)


def loss_and_grads(module: Any, batch: dict, autocast: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """One ``model_step`` loss and its gradients (optionally under CPU bf16 autocast)."""
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, _, _ = module.model_step(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.item(), grads


@contextmanager
def uncached_compilation() -> Iterator[None]:
    """Inductor compiles afresh inside (no FX-graph or autograd cache), so the pass runs and counts."""
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        yield
