"""The ``hf_trainer`` and ``trl`` sides: ``transformers.Trainer`` + PEFT and TRL's ``SFTTrainer``.

Both train on the same pre-collated batches as the other sides, in dataset order, with a callback timing
every optimizer step and a Trainer subclass recording every step's loss.
"""

from __future__ import annotations

from typing import Any

from benchlib.context import (
    Context,
    StepTimer,
    build_base_model,
    lm_linear_regex,
    lora_config,
    reset_peak,
    trainable_count,
    training_result,
)
from benchlib.workload import load_processor


# =============================================================================================
# Side: transformers.Trainer (and TRL's SFTTrainer on top of it)
# =============================================================================================
class _FlatBatches:
    """A map-style dataset of pre-collated batches, each returned as the model's keyword arguments."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i >= len(self.batches):
            raise IndexError(i)
        batch = self.batches[i]
        return {**batch["inputs"], "labels": batch["labels"]}


def unwrap_single(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate function for ``batch_size=1`` over pre-collated batches."""
    return items[0]


def recording_trainer(base: type) -> type:
    """A Trainer subclass that keeps the dataset order and records every step's loss."""
    from torch.utils.data import SequentialSampler

    class Recording(base):  # type: ignore[misc, valid-type]
        recorded: list[Any]

        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().training_step(*args, **kwargs)
            self.recorded.append(loss.detach())
            return loss

    return Recording


def timing_callback(timer: StepTimer) -> Any:
    """A TrainerCallback timing each optimizer step with device synchronisation."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.begin(state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.end(state.global_step - 1)

    return Timing()


def trainer_arguments(ctx: Context, config_cls: type, side: str, **overrides: Any) -> Any:
    """Shared Trainer arguments (only the fields ``config_cls`` knows are passed)."""
    import dataclasses

    wanted = {
        "output_dir": str(ctx.workdir / f"{side}-{ctx.args.rep}"),
        "per_device_train_batch_size": 1,
        "max_steps": ctx.args.warmup + ctx.args.steps,
        "learning_rate": ctx.args.lr,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "max_grad_norm": ctx.args.max_grad_norm,
        "bf16": ctx.is_cuda and ctx.bf16,
        "report_to": [],
        "save_strategy": "no",
        "eval_strategy": "no",
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "disable_tqdm": True,
        "seed": ctx.args.seed,
        "use_cpu": not ctx.is_cuda,
        **overrides,
    }
    known = {f.name for f in dataclasses.fields(config_cls)}
    dropped = sorted(set(wanted) - known)
    if dropped:
        print(f"[bench] note: {config_cls.__name__} has no {dropped}; left at defaults")
    return config_cls(**{k: v for k, v in wanted.items() if k in known})


def run_trainer_side(ctx: Context, side: str) -> dict[str, Any]:
    """``hf_trainer`` (Trainer + PEFT, no checkpointing) or ``trl`` (SFTTrainer, its defaults)."""
    from transformers import Trainer, TrainingArguments

    model, counts = build_base_model(ctx)
    regex = lm_linear_regex(model, ctx.facts)
    dataset = _FlatBatches(ctx.warmup_batches + ctx.timed_batches)
    timer = StepTimer(ctx.device, ctx.args.warmup, len(dataset))
    if side == "hf_trainer":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(ctx.args, regex))
        args = trainer_arguments(ctx, TrainingArguments, side, gradient_checkpointing=False)
        trainer = recording_trainer(Trainer)(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=unwrap_single,
            callbacks=[timing_callback(timer)],
        )
        notes = "Trainer + PEFT, bf16 autocast, no gradient checkpointing"
    else:
        import datasets
        from trl import SFTConfig, SFTTrainer

        # SFTTrainer only takes a datasets.Dataset: index the same pre-collated batches through it
        index = datasets.Dataset.from_dict({"batch_index": list(range(len(dataset)))})
        args = trainer_arguments(
            ctx, SFTConfig, side, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False
        )
        trainer = recording_trainer(SFTTrainer)(
            model=model,
            args=args,
            train_dataset=index,
            data_collator=lambda items: dataset[items[0]["batch_index"]],
            processing_class=load_processor(ctx.folder),
            peft_config=lora_config(ctx.args, regex),
            callbacks=[timing_callback(timer)],
        )
        notes = f"SFTTrainer defaults, gradient_checkpointing={getattr(args, 'gradient_checkpointing', '?')}"
    trainer.recorded = []
    reset_peak(ctx.device)
    trainer.train()
    losses = [float(x) for x in trainer.recorded]
    return training_result(ctx, side, timer, losses, counts, trainable_count(trainer.model), notes)
