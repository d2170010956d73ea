"""Our training sides: ``VLMFineTuner``'s step in a plain loop, and a real Lightning fit.

Both build the model as training does: ``VLMFineTuner`` on the saved random weights (``weights_folder``),
i.e. the package's one model build, then its ``configure_model``. ``run_ours`` runs the step of ``ours``
and of each lever side of ``OURS_VARIANTS`` (casts, compilation, padding, checkpointing) and can profile
a few more steps; ``run_lightning`` runs ``L.Trainer.fit`` on ``VLMFineTuner``. ``ours_step`` is also
what trains the adapter before ``--gen``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchlib.constants import OURS_VARIANTS
from benchlib.context import (
    Context,
    StepTimer,
    folder_counts,
    lm_target_regex,
    lora_settings,
    reset_peak,
    sync,
    to_device,
    trainable_count,
    training_result,
    weights_folder,
)
from benchlib.workload import pad_batch


# =============================================================================================
# Side: ours (what VLMFineTuner does per step, in a plain loop)
# =============================================================================================
def ours_step(model: Any, optimizer: Any, params: list[Any], batch: dict[str, Any], ctx: Context) -> Any:
    """One training step as ``VLMFineTuner`` + Lightning run it; returns the detached loss and norm.

    As in ``fit``: labelled positions found on the CPU copy, the family's ``host_inputs`` left on the CPU,
    no host sync inside the step (``NonFiniteGuard``'s flag goes to the fused AdamW as ``found_inf`` and
    is read one step later).
    """
    import torch

    from vlm_lightning.models.host_inputs import split_host_inputs
    from vlm_lightning.training.loss import causal_lm_loss, labelled_positions

    moved, host = split_host_inputs(batch["inputs"], ctx.facts)
    inputs = {**to_device(moved, ctx.device), **host}
    labels = to_device(batch["labels"], ctx.device)
    keep = batch.get("label_positions")
    keep = to_device(keep if keep is not None else labelled_positions(batch["labels"]), ctx.device)
    rows = batch.get("label_rows")
    rows = None if rows is None else to_device(rows, ctx.device)
    head = "auto" if OURS_VARIANTS.get(ctx.args.side, {}).get("fuse_head", True) else None
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.bf16):
        loss, _, _ = causal_lm_loss(model, inputs, labels, keep=keep, rows=rows, head=head)
    loss.backward()
    # VLMFineTuner.configure_gradient_clipping: one norm, logged and clipped (HF: max_grad_norm)
    norm = torch.nn.utils.clip_grad_norm_(params, ctx.args.max_grad_norm, foreach=True)  # logged + clipped
    if not ctx.diagnostics:  # first step: with lora_B = 0 the lora_A gradients are exactly zero in math
        a_grads = [p.grad for n, p in ctx.named_trainable if "lora_A" in n and p.grad is not None]
        ctx.diagnostics["lora_A_grad_nonzero_step1"] = sum(int((g != 0).sum()) for g in a_grads)
        ctx.diagnostics["lora_A_grad_absmax_step1"] = max(
            (float(g.abs().max()) for g in a_grads), default=0.0
        )
    bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))  # NonFiniteGuard's device flag
    previous = getattr(optimizer, "_bench_last_flag", None)
    if previous is not None and bool(previous):  # read one step late, as the deferred guard does
        raise FloatingPointError("non-finite loss or gradient in the previous step")
    if getattr(optimizer, "defaults", {}).get("fused"):
        optimizer.found_inf = bad.float()  # the fused kernel drops the update on the device
    optimizer._bench_last_flag = bad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), norm.detach()


def with_positions(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch plus its labelled positions and rows, found on the CPU (as ``VLMFineTuner`` does)."""
    from vlm_lightning.training.loss import labelled_positions, labelled_rows

    keep = labelled_positions(batch["labels"])
    return {**batch, "label_positions": keep, "label_rows": labelled_rows(batch["labels"], keep)}


def pin(obj: Any, ctx: Context) -> Any:
    """Page-locked copies of a batch's tensors on CUDA runs (what ``DataLoader(pin_memory=True)`` does)."""
    if not ctx.is_cuda:
        return obj
    if hasattr(obj, "pin_memory"):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: pin(v, ctx) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pin(v, ctx) for v in obj)
    return obj


def finetuner(
    ctx: Context, *, compile_lm: bool, compile_vision: bool, gradient_checkpointing: bool = False
) -> tuple[Any, dict[str, Any]]:
    """``VLMFineTuner`` on the saved random weights, and the base model's parameter counts.

    Its ``__init__`` runs the package's one model build (``vlm_lightning.models.build.build_model``: load
    from the folder, host shapes, packing methods, LoRA training mode) with these settings, exactly as
    ``python -m vlm_lightning fit`` does; ``prepare_as_fit`` then runs its ``configure_model``.
    """
    import functools

    import torch

    from vlm_lightning.training.module import VLMFineTuner

    folder = weights_folder(ctx)
    module = VLMFineTuner(
        str(folder),
        mode="lora",
        lora=lora_settings(ctx.args, lm_target_regex(ctx)),
        optimizer=functools.partial(torch.optim.AdamW, lr=ctx.args.lr, weight_decay=0.0),
        scheduler="constant",
        metrics=["exact_match"],
        val_generate=False,
        gradient_checkpointing=gradient_checkpointing,
        dtype="bfloat16" if ctx.bf16 else "float32",
        attn_implementation=ctx.args.attn,
        compile_language_model=compile_lm,
        compile_vision_tower=compile_vision,
    )
    return module, folder_counts(folder)


def precision_of(ctx: Context) -> str:
    """The Lightning precision of this run: bf16 weights train under ``bf16-mixed`` (autocast)."""
    return "bf16-mixed" if ctx.bf16 else "32-true"


def prepare_as_fit(ctx: Context, module: Any) -> None:
    """``VLMFineTuner.configure_model`` under this run's precision (PEFT input casts skipped under mixed
    precision, then the configured compilation), then the move to the device: what ``fit`` does before
    its first step. A trainer is attached only so that ``configure_model`` reads the precision from it."""
    import lightning as L

    module.trainer = L.Trainer(
        accelerator="gpu" if ctx.is_cuda else "cpu",
        devices=1,
        precision=precision_of(ctx),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module.configure_model()
    module.trainer = None
    module.to(ctx.device)


def lora_input_casts(model: Any, enabled: bool | None = None) -> int:
    """How many PEFT LoRA layers skip their input cast; with ``enabled=True``, switch the casts back on
    first (and return how many layers were switched)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    skipped = [m for m in layers if getattr(m, "cast_input_dtype_enabled", True) is False]
    if enabled:
        for layer in skipped:
            layer.cast_input_dtype_enabled = True
    return len(skipped)


def run_ours(ctx: Context, side: str) -> dict[str, Any]:
    """Our step on the model ``fit`` prepares, with the levers of ``OURS_VARIANTS[side]``.

    The model is built and prepared by ``VLMFineTuner`` itself (``finetuner`` + ``prepare_as_fit``); the
    levers that are settings of it (decoder / vision compilation, gradient checkpointing) are passed as
    those settings. Only two levers have no setting there and keep local code: keeping PEFT's input casts
    under bf16 (``configure_model`` always skips them under mixed precision) and ``--compile-dynamic``
    other than ``auto`` (``configure_model`` compiles with ``dynamic=None``).
    """
    import torch

    from vlm_lightning.models.acceleration import compile_decoder_layers, compile_vision_layers

    levers = OURS_VARIANTS[side]
    dynamic = {"auto": None, "true": True, "false": False}[ctx.args.compile_dynamic]
    local_compile = dynamic is not None  # not a setting of VLMFineTuner: compiled here instead
    module, counts = finetuner(
        ctx,
        compile_lm=levers["compile"] and not local_compile,
        compile_vision=levers["vision"] and not local_compile,
        # compiled layers: the compiler recomputes (as VLMFineTuner), else transformers' checkpointing
        gradient_checkpointing=levers["gc"] and not (local_compile and levers["compile"]),
    )
    prepare_as_fit(ctx, module)
    model = module.model
    model.train()
    notes = [f"pad to x{ctx.args.pad_to}" if levers["pad"] else "dynamic padding"]
    if ctx.bf16 and not levers["skip_cast"]:
        lora_input_casts(model, enabled=True)  # the lever: PEFT's casts kept (the previous path)
    if skipped := lora_input_casts(model):
        notes.append(f"PEFT input cast skipped on {skipped} LoRA layers")
    if levers["compile"]:
        if local_compile:
            compile_decoder_layers(model, ctx.facts, dynamic=dynamic, recompute_activations=levers["gc"])
        notes.append(f"decoder layers compiled (dynamic={dynamic})")
    if levers["vision"]:
        if local_compile:
            compile_vision_layers(model, ctx.facts, dynamic=dynamic)
        notes.append("vision layers compiled")
    if levers["gc"]:
        notes.append(
            "activation recomputation by the compiler (memory budget 0)"
            if levers["compile"]
            else "gradient checkpointing (non-reentrant)"
        )
    notes.append("model built and prepared by VLMFineTuner (models.build + configure_model)")
    params = [p for p in model.parameters() if p.requires_grad]
    ctx.named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=ctx.args.lr, weight_decay=0.0, fused=ctx.is_cuda)
    pad_id = ctx.meta["pad_id"]
    pad_to = ctx.args.pad_to if levers["pad"] else 1
    # pinned like the trainer's DataLoader (pin_memory=True on CUDA) so host-to-device copies are async
    warmup = [pin(with_positions(pad_batch(b, pad_to, pad_id)), ctx) for b in ctx.warmup_batches]
    timed = [pin(with_positions(pad_batch(b, pad_to, pad_id)), ctx) for b in ctx.timed_batches]
    timer = StepTimer(ctx.device, len(warmup), len(warmup) + len(timed))
    losses = []
    reset_peak(ctx.device)
    norms = []
    for step, batch in enumerate(warmup + timed):
        timer.begin(step)
        loss, norm = ours_step(model, optimizer, params, batch, ctx)
        losses.append(loss)
        norms.append(norm)
        timer.end(step)
    if ctx.args.profile:
        profile_steps(lambda b: ours_step(model, optimizer, params, b, ctx), timed[:3], ctx.device)
    result = training_result(
        ctx, side, timer, [float(x) for x in losses], counts, trainable_count(model), ", ".join(notes)
    )
    result["padded_tokens_per_s"] = sum(b["labels"].numel() for b in timed) / timer.window
    result["grad_norms"] = [float(x) for x in norms]
    result.update(ctx.diagnostics)
    return result


def profile_steps(step: Callable[[Any], Any], batches: list[dict[str, Any]], device: Any) -> None:
    """Print the top kernels / ops by self device time over a few more steps (``--profile``)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches:
            step(batch)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    print("\n".join(f"[bench] profile | {line}" for line in table.splitlines()), flush=True)


# =============================================================================================
# Side: a real Lightning fit of VLMFineTuner
# =============================================================================================
class _BatchList:
    """Map-style dataset of full collated batches (``DataLoader(batch_size=None)``)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


def run_lightning(ctx: Context) -> dict[str, Any]:
    """``L.Trainer.fit`` on ``VLMFineTuner`` (built from the saved random weights) over the shared batches."""
    import lightning as L
    from torch.utils.data import DataLoader

    module, counts = finetuner(ctx, compile_lm=ctx.is_cuda, compile_vision=ctx.is_cuda)
    pad_id = ctx.meta["pad_id"]
    batches = [pad_batch(b, ctx.args.pad_to, pad_id) for b in ctx.warmup_batches + ctx.timed_batches]
    timer = StepTimer(ctx.device, ctx.args.warmup, len(batches))
    losses: list[Any] = []
    model_step = module.model_step

    def recorded_step(batch: dict[str, Any]) -> Any:
        """``model_step`` keeping each step's mean loss (what training_step returns may be scaled)."""
        out = model_step(batch)
        losses.append(out[0].detach())
        return out

    module.model_step = recorded_step

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            timer.begin(batch_idx)

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            timer.end(batch_idx)

    precision = precision_of(ctx)
    trainer = L.Trainer(
        accelerator="gpu" if ctx.is_cuda else "cpu",
        devices=1,
        precision=precision,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=ctx.args.max_grad_norm,
        callbacks=[Timing()],
    )
    reset_peak(ctx.device)
    trainer.fit(module, train_dataloaders=DataLoader(_BatchList(batches), batch_size=None, shuffle=False))
    notes = f"L.Trainer.fit(VLMFineTuner), {precision}, pad to x{ctx.args.pad_to}"
    return training_result(
        ctx, "lightning", timer, [float(x) for x in losses], counts, trainable_count(module.model), notes
    )
