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

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.fsdp import _is_sharded_checkpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint import load
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from vlm_lightning.errors import SettingError
from vlm_lightning.models.acceleration import repeated_layers
from vlm_lightning.models.families import FamilyFacts


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor shard (FSDP2 / tensor parallel)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_value(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every rank calls it), or the tensor itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def shard_model(
    model: torch.nn.Module,
    facts: FamilyFacts,
    mesh: Any,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> int:
    """``fully_shard`` each decoder and vision encoder layer, then the root; return the number of units.

    ``param_dtype`` (e.g. bf16) gathers parameters in that dtype for compute while gradients are reduced
    in float32. ``reshard_after_forward=False`` keeps gathered layers until backward (ZeRO-2-like: less
    communication, more memory). ``cpu_offload`` keeps parameters, gradients and optimizer state in CPU
    memory between uses (the optimizer step runs on the CPU).
    """
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
    )
    kwargs = {
        "mesh": mesh,
        "mp_policy": policy,
        "reshard_after_forward": reshard_after_forward,
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    units = 0
    for path in (facts.language_model, facts.vision_tower):
        for layer in repeated_layers(model, path):
            fully_shard(layer, **kwargs)
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
    fully_shard(root, **kwargs)
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


def _to_device_except_shards(module: torch.nn.Module, device: torch.device) -> None:
    """Move buffers and plain parameters of ``module`` to ``device``; DTensor shards stay where they are."""
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if not isinstance(param, DTensor):
                sub._parameters[name] = torch.nn.Parameter(
                    param.data.to(device), requires_grad=param.requires_grad
                )
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer is not None:
                sub._buffers[name] = buffer.to(device)


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (``data_parallel_size`` = world size, no tensor parallelism).

    Runs on CUDA (NCCL) and, for tests, on CPU (gloo). Multi-node: ``--trainer.num_nodes N``; the
    processes of all nodes form the one sharding group.
    """

    def __init__(
        self, save_distributed_checkpoint: bool = False, cpu_offload: bool = False, **kwargs: Any
    ) -> None:
        self.cpu_offload = cpu_offload
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

    def model_to_device(self) -> None:
        """Move the module to the GPU, except offloaded shards, which FSDP2 keeps in CPU memory."""
        if not self.cpu_offload:
            return super().model_to_device()
        for child in self.model.children():
            if is_sharded(child):
                _to_device_except_shards(child, self.root_device)
            else:
                child.to(self.root_device)  # metrics and other unsharded parts move as usual
        return None

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a full file as Lightning does; a sharded folder holding only the trained weights (what
        ``VLMFineTuner.on_save_checkpoint`` keeps) loads those, with their optimizer state.

        Lightning's own sharded load asks the folder for every weight, frozen base included, and fails.
        """
        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=weights_only)
        module = self.model
        trained = {name for name, param in module.named_parameters() if param.requires_grad}
        weights = {k: v for k, v in get_model_state_dict(module).items() if k in trained}
        state = {"state_dict": weights}
        load(state, checkpoint_id=path)
        module.load_state_dict(state["state_dict"], strict=False)
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optimizer_state = {key: get_optimizer_state_dict(module, optimizer)}
            load(optimizer_state, checkpoint_id=path)
            set_optimizer_state_dict(
                module,
                optimizer,
                optim_state_dict=optimizer_state[key],
                options=StateDictOptions(cpu_offload=True),
            )
        return torch.load(path / "meta.pt", weights_only=weights_only)


#: ``--trainer.strategy`` names that run FSDP2 here (``fsdp`` included: Lightning's FSDP1 strategy refuses
#: CPU processes and wraps the whole module by default; FSDP2 shards each layer and keeps parameter names)
FSDP_NAMES: dict[str, dict[str, Any]] = {"fsdp": {}, "fsdp2": {}, "fsdp_cpu_offload": {"cpu_offload": True}}


def _strategy_name(strategy: Any) -> str:
    """A strategy setting as text: its name, or its class path / class name."""
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, dict):
        return str(strategy.get("class_path", ""))
    return type(strategy).__name__ if strategy is not None else "auto"


def check_strategy(strategy: Any, mode: str | None, accelerator: Any = "auto") -> None:
    """Refuse, before anything loads, a strategy this trainer does not run or one that cannot work with ``mode``
    or the ``accelerator``."""
    name = _strategy_name(strategy)
    init_args = (strategy.get("init_args") or {}) if isinstance(strategy, dict) else {}
    offload = FSDP_NAMES.get(name, {}).get("cpu_offload") or init_args.get("cpu_offload") is True
    if offload and (str(accelerator) == "cpu" or not torch.cuda.is_available()):
        raise SettingError(
            f"--trainer.strategy {name} needs a CUDA GPU (FSDP2 offloads through pinned host memory); "
            "on CPU use --trainer.strategy fsdp"
        )
    if "deepspeed" in name.lower():
        raise SettingError(
            f"--trainer.strategy {name}: DeepSpeed is not supported by vlm_lightning (not tested with its PEFT "
            "wrapping, checkpoints and export); use --trainer.strategy fsdp (FSDP2: ZeRO-3-like sharding) or ddp"
        )
    if name.rsplit(".", 1)[-1] == "FSDPStrategy":
        raise SettingError(
            f"--trainer.strategy {name}: Lightning's FSDP1 strategy is not supported; use --trainer.strategy fsdp "
            "(FSDP2: each decoder and vision layer its own shard unit, from the model family)"
        )
    sharded = name in FSDP_NAMES or name.rsplit(".", 1)[-1] in ("FSDP2Strategy", "ModelParallelStrategy")
    if sharded and mode == "qlora":
        raise SettingError(
            f"--trainer.strategy {name} cannot run model.mode qlora: sharding bitsandbytes' 4-bit weights loses "
            "their quantization state. Use --trainer.strategy ddp with qlora (each GPU holds the 4-bit base), "
            "or model.mode lora with fsdp"
        )


def resolve_strategy(strategy: Any) -> Any:
    """The strategy object for a name in ``FSDP_NAMES`` (anything else is passed to Lightning as given)."""
    if isinstance(strategy, str) and strategy in FSDP_NAMES:
        return FSDP2Strategy(**FSDP_NAMES[strategy])
    return strategy


__all__ = [
    "FSDP2Strategy",
    "full_value",
    "check_strategy",
    "is_sharded",
    "resolve_strategy",
    "shard_model",
]
