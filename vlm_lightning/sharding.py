"""Sharded data parallelism (FSDP2): a family's model cut into per-layer shards, and the strategy that runs it.

``--trainer.strategy fsdp2`` is Lightning's ``ModelParallelStrategy`` with every process in one data-parallel
group (no tensor parallelism); ``VLMFineTuner.configure_model`` then calls ``shard_model``: each decoder layer
of the language model and each encoder layer of the vision tower becomes one ``fully_shard`` unit (the
auto-wrap policy comes from ``FamilyFacts.language_model`` / ``vision_tower``), and the root takes the rest
(embeddings, projector, head). Frozen and trainable parameters may share a unit (LoRA on a frozen base):
FSDP2 keeps ``requires_grad`` per parameter, and only trainable ones get gradients and optimizer state.

Checkpoints are full by default (``save_distributed_checkpoint=False``): rank 0 writes the same adapter-sized
file as one process, so ``test --ckpt_path``, resume and ``export`` work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from vlm_lightning.models.acceleration import repeated_layers
from vlm_lightning.models.families import FamilyFacts


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor shard (FSDP2 / tensor parallel)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_value(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every rank calls it), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def shard_model(
    model: torch.nn.Module,
    facts: FamilyFacts,
    mesh: Any,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> int:
    """``fully_shard`` each decoder and vision encoder layer, then the root; return the number of units.

    ``param_dtype`` (e.g. bf16) gathers parameters in that dtype for compute while gradients are reduced
    in float32. ``reshard_after_forward=False`` keeps gathered layers until backward (ZeRO-2-like: less
    communication, more memory).
    """
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
    )
    units = 0
    for path in (facts.language_model, facts.vision_tower):
        for layer in repeated_layers(model, path):
            fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
            units += 1
    # ``generate`` computes image features through ``get_image_features``, which calls the vision tower
    # and projector modules but not the root: each is a unit of its own, so its weights gather there
    for path in dict.fromkeys((facts.vision_tower, facts.projector)):
        if path != facts.vision_tower and path.startswith(facts.vision_tower + "."):
            continue  # inside the tower's unit
        fully_shard(
            _submodule(model, path), mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward
        )
        units += 1
    # the root unit is the transformers model itself, not a PEFT wrapper: ``generate`` calls it directly
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # FSDP2 picks its root at the first forward and refuses a tower that runs before the root (as
    # ``generate`` does): settle the root now (private API, covered by tests/integration/test_fsdp.py)
    root._get_fsdp_state()._lazy_init()
    return units + 1


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The module at ``path`` of the transformers model (inside a PEFT wrapper or not)."""
    for name, module in model.named_modules():
        if name == path or name.endswith("." + path):
            return module
    raise ValueError(f"module {path!r} not found in {type(model).__name__}")


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (``data_parallel_size`` = world size, no tensor parallelism).

    Runs on CUDA (NCCL) and, for tests, on CPU (gloo). Multi-node: ``--trainer.num_nodes N``; the
    processes of all nodes form the one sharding group.
    """

    strategy_name = "fsdp2"

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs: Any) -> None:
        kwargs.pop("data_parallel_size", None)
        kwargs.pop("tensor_parallel_size", None)
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        """Size the data-parallel mesh dimension to the world size once the processes exist."""
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def register_strategies() -> None:
    """Make ``--trainer.strategy fsdp2`` (and ``fsdp2_sharded_checkpoint``) known to Lightning."""
    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register(
            "fsdp2", FSDP2Strategy, description="FSDP2 (fully_shard per layer), full checkpoints"
        )
        StrategyRegistry.register(
            "fsdp2_sharded_checkpoint",
            FSDP2Strategy,
            description="FSDP2 (fully_shard per layer), one checkpoint shard per process",
            save_distributed_checkpoint=True,
        )


__all__ = ["FSDP2Strategy", "full_value", "is_sharded", "register_strategies", "shard_model"]
