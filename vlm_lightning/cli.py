"""``python -m vlm_lightning {fit,validate,test,predict} --config FILE``: LightningCLI with our defaults."""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from vlm_lightning.callbacks import PredictionWriter, RunCheckpoint
from vlm_lightning.data.datamodule import DocumentDataModule
from vlm_lightning.module import VLMFineTuner


class VLMLightningCLI(LightningCLI):
    """LightningCLI wiring: processor linked from the model, checkpoint + early stopping composed."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.name_or_path", "data.processor_name")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val/loss",
                "early_stopping.patience": 3,
                "early_stopping.strict": False,
            }
        )
        parser.link_arguments("checkpoint.monitor", "early_stopping.monitor")
        parser.link_arguments("checkpoint.mode", "early_stopping.mode")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = config["trainer"]
        if trainer_cfg.get("logger") in (None, True):
            root = trainer_cfg.get("default_root_dir") or os.getcwd()
            trainer_cfg["logger"] = CSVLogger(save_dir=root, name="")
        extra = list(kwargs.pop("extra_callbacks", []))
        extra += [PredictionWriter()]
        if trainer_cfg.get("logger") is not False:
            extra.append(LearningRateMonitor(logging_interval="step"))
        return super().instantiate_trainer(extra_callbacks=extra, **kwargs)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.global_rank != 0:
            return
        ckpt = trainer.checkpoint_callback
        datamodule = self.datamodule
        from vlm_lightning.callbacks.predictions import run_dir

        skipped = datamodule.write_skipped(run_dir(trainer)) if datamodule is not None else None
        if skipped:
            print(f"[vlm_lightning] skipped rows listed in {skipped}")
        best = getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "")
        if best:
            config = getattr(self.config.get("fit", self.config), "config", None)
            cfg_arg = f" --config {config[0]}" if config else ""
            print(f"[vlm_lightning] best checkpoint: {best}")
            print(f"[vlm_lightning] evaluate it with:\n  python -m vlm_lightning test{cfg_arg} --ckpt_path {best}")


def main(args: list[str] | None = None, run: bool = True) -> VLMLightningCLI:
    """Entry point of ``python -m vlm_lightning``."""
    return VLMLightningCLI(
        VLMFineTuner,
        DocumentDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"default_root_dir": "runs", "log_every_n_steps": 1},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
