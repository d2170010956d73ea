"""Deferred NonFiniteGuard under two gloo ranks: a NaN on one rank drops the update on both, and both
ranks read the verdict at the same step (a rank raising alone would leave the other in a collective)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_helpers import free_port, gloo_group

from vlm_lightning.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError

NAN_STEP, NAN_RANK, STEPS = 2, 1, 5


def _sum_over_ranks(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
    assert reduce_op == "sum"
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def _worker(rank: int, world: int, port: int, out_dir: str, check_grads: bool) -> None:
    with gloo_group(rank, world, port):
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 1)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
        guard = NonFiniteGuard(action="stop", check_grads=check_grads)
        trainer = SimpleNamespace(
            world_size=world,
            global_rank=rank,
            global_step=0,
            current_epoch=0,
            precision="bf16-mixed",
            checkpoint_callback=None,
            strategy=SimpleNamespace(reduce=_sum_over_ranks),
        )
        module = SimpleNamespace(device=torch.device("cpu"))
        record: dict = {"weights": [], "raised_at": None, "message": ""}
        for step in range(STEPS):
            trainer.global_step = step
            guard.on_train_batch_start(trainer, module, {"ids": [f"r{rank}s{step}"]}, step)
            loss = layer(torch.ones(2, 3)).pow(2).mean()
            if step == NAN_STEP and rank == NAN_RANK:
                loss = loss * float("nan")
            guard.on_before_backward(trainer, module, loss)
            loss.backward()
            for p in layer.parameters():  # as DDP does: a NaN gradient on one rank reaches every rank
                dist.all_reduce(p.grad)
            record["weights"].append(layer.weight.detach().clone().tolist())
            try:
                guard.on_before_optimizer_step(trainer, module, optimizer)
            except NonFiniteLossError as error:
                record["raised_at"], record["message"] = step, str(error)
                break
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            guard.on_train_batch_end(trainer, module, None, None, step)
        record["final"] = layer.weight.detach().tolist()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.parametrize("check_grads", [True, False])
def test_ranks_drop_the_update_and_stop_at_the_same_step(tmp_path: Path, check_grads: bool) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), check_grads), nprocs=2, join=True)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for record in records:
        assert record["raised_at"] == NAN_STEP + 1  # read one step late, on both ranks
        assert f"global step {NAN_STEP}" in record["message"]
        # the NaN step's update never reached the weights: unchanged since before that step
        assert record["final"] == record["weights"][NAN_STEP]
    assert (
        "non-finite loss nan" in records[NAN_RANK]["message"] and "['r1s2']" in records[NAN_RANK]["message"]
    )
    # the other rank's own loss was finite: it learns of the NaN from the all-reduced gradient, or (without
    # the gradient check) from the flag reduced over ranks
    other = records[1 - NAN_RANK]["message"]
    assert ("non-finite gradient" in other) if check_grads else ("on another rank" in other)
