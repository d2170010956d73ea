"""``python -m vlm_lightning {fit,validate,test,predict} --config FILE``: LightningCLI with our defaults."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import CheckpointIO

from vlm_lightning.callbacks import PredictionWriter, RunCheckpoint
from vlm_lightning.callbacks.curves import TrainingCurves
from vlm_lightning.callbacks.logger_checks import TrackingChecks
from vlm_lightning.callbacks.nonfinite import NonFiniteGuard
from vlm_lightning.callbacks.prediction_table import PredictionTable
from vlm_lightning.callbacks.predictions import write_skipped_rows
from vlm_lightning.callbacks.preemption import PreemptionCheckpoint
from vlm_lightning.callbacks.progress import StepProgressBar
from vlm_lightning.callbacks.run_log import ResumedCSVLogger, run_folder_of
from vlm_lightning.callbacks.run_summary import RunSummary
from vlm_lightning.callbacks.throughput import Throughput
from vlm_lightning.checkpoints.io import (
    OUR_KEY,
    AtomicCheckpointIO,
    validate_checkpoint,
)
from vlm_lightning.checkpoints.settings import (
    LIGHTNING_CKPT_ALIASES,
    CheckpointSettingsError,
    evaluation_differences,
    settings_from_checkpoint,
)
from vlm_lightning.cli.checkpoint_paths import evaluated_checkpoint, resume_last
from vlm_lightning.cli.library_noise import quiet_libraries
from vlm_lightning.cli.parser import ConciseArgumentParser, parser_kwargs
from vlm_lightning.cli.secrets import RedactingSaveConfigCallback, load_env_file
from vlm_lightning.cli.startup_checks import (
    check_lora_targets,
    check_metrics_fit_answers,
    check_monitor,
    check_run_folder,
    check_val_check_interval,
    first_answers,
    precision_notes,
)
from vlm_lightning.data.datamodule import DocumentDataModule
from vlm_lightning.data.leakage import evaluated_on_training_file
from vlm_lightning.distributed import forward_is_collective
from vlm_lightning.errors import SettingError, UserError, missing_package_message, setting_error_in
from vlm_lightning.metrics import build_metrics, metric_names
from vlm_lightning.models.loading import family_of
from vlm_lightning.models.packed_positions import packing_attention_problem
from vlm_lightning.models.peft_setup import LoraSettings
from vlm_lightning.training.module import VLMFineTuner
from vlm_lightning.training.sharding import check_strategy, resolve_strategy

LORA_FIELDS = {f.name for f in dataclasses.fields(LoraSettings)}


class VLMLightningCLI(TrackingChecks, LightningCLI):
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
                # VLMFineTuner's default optimizer, spelled as a class so that --model.optimizer.lr 1e-4 works
                # without a config (fused on CUDA: configure_optimizers)
                "model.optimizer": {
                    "class_path": "torch.optim.AdamW",
                    "init_args": {"lr": 2e-4, "weight_decay": 0.0},
                },
            }
        )
        parser.link_arguments("checkpoint.monitor", "early_stopping.monitor")
        parser.link_arguments("checkpoint.mode", "early_stopping.mode")

    def before_instantiate_classes(self) -> None:
        """Check settings against each other and the data before the model loads (``startup_checks``)."""
        super().before_instantiate_classes()
        self._prepared_data: DocumentDataModule | None = None
        subcommand = self.subcommand
        if subcommand not in ("fit", "validate", "test", "predict"):
            return
        section = self.config[subcommand]
        trainer = _plain(section.get("trainer")) or {}
        check_run_folder(trainer.get("default_root_dir") or os.getcwd())
        check_val_check_interval(trainer.get("val_check_interval"))
        model = _plain(section.get("model")) or {}
        check_strategy(trainer.get("strategy"), model.get("mode"), trainer.get("accelerator", "auto"))
        for note in precision_notes(trainer, model, torch.cuda.is_available()):
            print(f"[vlm_lightning] {note}", file=sys.stderr)
        lora = model.get("lora") or {}
        if isinstance(lora, dict):
            LoraSettings(**{k: v for k, v in lora.items() if k in LORA_FIELDS})  # numbers in range
            if isinstance(lora.get("targets"), str):
                check_lora_targets(lora["targets"])
        names = metric_names(model.get("metrics"))  # a list, one name or a comma list
        build_metrics(names)  # an unknown name is a SettingError listing the known ones
        data = DocumentDataModule(**(_plain(section.get("data")) or {}))
        data.prepare(subcommand)  # rows validated now, not after the model has loaded
        if subcommand == "fit" and data.hparams.packing:
            problem = packing_attention_problem(model.get("attn_implementation"))
            if problem:
                raise SettingError(problem)
        self._prepared_data = data
        # predict scores the rows that have answers, as test does
        scored = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}.get(subcommand)
        records = data.datasets[scored].records if scored in data.datasets else []
        if records and (scored != "val" or model.get("val_generate", True)):
            check_metrics_fit_answers(names, {scored: records})
        if subcommand == "fit":
            monitor = (_plain(section.get("checkpoint")) or {}).get("monitor")
            check_monitor(monitor, names, model.get("val_generate", True), first_answers(records))
        if _single_process(trainer):  # the token lengths too (under DDP: once the ranks' group exists)
            data.setup(subcommand)
        # a mid-epoch checkpoint in another batch layout stops before the model loads and config.yaml is rewritten
        data.refuse_another_layout(getattr(self, "_ckpt_data_state", None) or {})

    def instantiate_classes(self) -> None:
        """As LightningCLI, with the data module whose rows ``before_instantiate_classes`` validated."""
        super().instantiate_classes()
        prepared = getattr(self, "_prepared_data", None)
        if prepared is not None:
            self.datamodule = prepared
            self.config_init[self.subcommand]["data"] = prepared

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_cfg = self._get(self.config_init, "trainer")
        logger = trainer_cfg.get("logger")
        resumed = getattr(self, "_resumed_run", None)
        if resumed is not None and (logger in (None, True) or type(logger) is CSVLogger):
            folder, step = resumed  # one run, one folder: continue the checkpoint's own logs
            print(f"[vlm_lightning] resuming run {folder} from step {step}", file=sys.stderr)
            flush = getattr(logger, "_flush_logs_every_n_steps", 100)
            trainer_cfg["logger"] = ResumedCSVLogger(folder, step, flush_logs_every_n_steps=flush)
        elif logger in (None, True):
            root = trainer_cfg.get("default_root_dir") or os.getcwd()
            trainer_cfg["logger"] = CSVLogger(save_dir=root, name="")
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        callbacks = with_default_callbacks(
            callbacks,
            progress_bar=trainer_cfg.get("enable_progress_bar") is not False,
            logger=trainer_cfg.get("logger") is not False,
        )
        trainer_cfg["callbacks"] = callbacks
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        trainer_cfg["plugins"] = plugins
        trainer_cfg["strategy"] = resolve_strategy(trainer_cfg.get("strategy", "auto"))  # fsdp: FSDP2
        if forward_is_collective(trainer_cfg["strategy"]):
            trainer_cfg["inference_mode"] = False  # FSDP2 cannot gather weights into inference tensors
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Take the trained structure from ``--ckpt_path``; every other model setting stays as given.

        Lightning's own version replaces all ``--model.*`` settings with the checkpoint's (even the base
        model's path, the generation budget and the metrics). Here only what shapes the trained weights
        comes from the checkpoint (``checkpoint_settings``); an explicit contradiction is an error, and
        a base model of another family is refused before it loads. The file is validated first, so a
        truncated, corrupt or unsafe checkpoint ends with ``CheckpointError``'s message.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand == "fit" and ckpt_path == "last":
            ckpt_path = resume_last(self.config["fit"])
        elif subcommand in ("validate", "test", "predict"):
            ckpt_path = evaluated_checkpoint(subcommand, self.config[subcommand])
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_ALIASES:
            return
        # settings only; a missing, truncated or unsafe file stops here, before the model loads
        ckpt = validate_checkpoint(ckpt_path, require_ours=False, weights=False)
        folder = run_folder_of(ckpt_path)
        self._ckpt_data_state = ckpt.get(DocumentDataModule.__qualname__) if subcommand == "fit" else None
        if subcommand == "fit" and folder is not None:
            self._resumed_run = (folder, int(ckpt.get("global_step", 0)))
        hparams = dict(ckpt.get("hyper_parameters") or {})
        if not hparams:
            return
        model_cfg = self.config[subcommand]["model"]
        values, supplied = settings_from_checkpoint(_plain(model_cfg), hparams, ckpt_path)
        _check_base_model(ckpt_path, ckpt.get(OUR_KEY) or {}, _plain(model_cfg))
        try:
            self.config = self.parser.parse_object({subcommand: {"model": values}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing the model structure stored in {ckpt_path} failed!\n")
            raise
        if supplied:
            listed = "; ".join(supplied)
            print(f"[vlm_lightning] {ckpt_path} sets the trained structure: {listed}", file=sys.stderr)
        if subcommand != "fit":
            differences = evaluation_differences(
                ckpt, _plain(self.config[subcommand].get("data")) or {}, _plain(model_cfg)
            )
            if differences:
                saved = folder / "config.yaml" if folder else None
                where = f" (the run's own settings: {saved})" if saved and saved.is_file() else ""
                print(
                    f"[vlm_lightning] warning: {subcommand} runs with other settings than {ckpt_path} was trained "
                    f"with: {'; '.join(differences)}{where}",
                    file=sys.stderr,
                )
            data_cfg = _plain(self.config[subcommand].get("data")) or {}
            split = {"validate": "val", "test": "test"}.get(subcommand)
            trained_on = {"train": (ckpt.get("datamodule_hyper_parameters") or {}).get("train")}
            if split and not data_cfg.get("train"):  # with data.train the data module says it
                if same := evaluated_on_training_file({**trained_on, split: data_cfg.get(split)}, split):
                    print(f"[vlm_lightning] warning: {same} ({ckpt_path} was trained on it)", file=sys.stderr)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.global_rank != 0:
            return
        ckpt = trainer.checkpoint_callback
        datamodule = self.datamodule
        folder = trainer.loggers[0].log_dir if trainer.loggers else trainer.default_root_dir
        skipped = write_skipped_rows(datamodule.skipped, folder) if datamodule is not None else None
        if skipped:
            print(f"[vlm_lightning] skipped rows listed in {skipped}")
        chosen = getattr(ckpt, "best_model_path", "")
        best = chosen or getattr(ckpt, "last_model_path", "")
        if best:
            # the run's own settings (config file + every command-line override), saved by LightningCLI
            saved = os.path.join(folder, "config.yaml") if folder else ""
            config = getattr(self.config.get("fit", self.config), "config", None)
            if saved and os.path.isfile(saved):
                cfg_arg = f" --config {saved}"
            else:
                cfg_arg = f" --config {config[0]}" if config else ""
            # without a chosen best (no validation ran): the last one, named as such
            print(f"[vlm_lightning] {'best' if chosen else 'last'} checkpoint: {best}")
            has_test = bool(datamodule is not None and datamodule.paths.get("test"))
            test_arg = "" if has_test else " --data.test YOUR_TEST.jsonl"  # the run has no test split
            print(
                "[vlm_lightning] evaluate it with:\n"
                f"  python -m vlm_lightning test{cfg_arg} --ckpt_path {best}{test_arg}"
            )


def _single_process(trainer: dict[str, Any]) -> bool:
    """Whether the trainer settings run one process (then the data can be fully checked before the model)."""
    if int(trainer.get("num_nodes") or 1) != 1:
        return False
    devices = trainer.get("devices", "auto")
    if str(devices) == "auto":
        gpu = str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        return not (gpu and torch.cuda.is_available() and torch.cuda.device_count() > 1)
    if isinstance(devices, list | tuple):
        return len(devices) == 1
    if str(devices) == "-1":  # all GPUs
        return torch.cuda.device_count() <= 1
    return str(devices) == "1"


def default_callbacks(progress_bar: bool = True, logger: bool = True) -> list[Callback]:
    """Every callback a run gets by default, one per type (the one table of defaults)."""
    defaults: list[Callback] = [
        PredictionWriter(),
        PreemptionCheckpoint(),
        NonFiniteGuard(action="stop"),
        Throughput(),
        TrainingCurves(),
        RunSummary(),
        PredictionTable(),
    ]
    if progress_bar:
        defaults.append(StepProgressBar())
    if logger:
        defaults.append(LearningRateMonitor(logging_interval="step"))
    return defaults


def with_default_callbacks(callbacks: list[Callback], **kwargs: bool) -> list[Callback]:
    """The user's callbacks plus each default whose type the user did not list (a listed one replaces it)."""
    chosen = list(callbacks)
    for default in default_callbacks(**kwargs):
        kind = ProgressBar if isinstance(default, ProgressBar) else type(default)  # any bar replaces ours
        if not any(isinstance(c, kind) for c in callbacks):
            chosen.append(default)
    return chosen


def _check_base_model(ckpt_path: str, info: dict[str, Any], model_cfg: dict[str, Any]) -> None:
    """Refuse a base model of another family than the checkpoint's, before the model loads."""
    trained_family, trained_base = info.get("family"), info.get("name_or_path")
    base = model_cfg.get("name_or_path")
    if not (trained_family and base):
        return
    family = family_of(base, bool(model_cfg.get("trust_remote_code"))).name
    if family != trained_family:
        raise CheckpointSettingsError(
            f"{ckpt_path} holds {trained_family} weights (trained from {trained_base}); "
            f"--model.name_or_path {base} is a {family} model: give the base model the checkpoint was "
            "trained from"
        )
    if trained_base and not _same_path(base, trained_base):
        print(
            f"[vlm_lightning] base model: {base} (the checkpoint was trained from {trained_base})",
            file=sys.stderr,
        )


def _same_path(a: str, b: str) -> bool:
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def _plain(value: Any) -> Any:
    """A (nested) jsonargparse Namespace as dicts, without private ``_`` keys."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    return value


def _user_errors() -> tuple[type[BaseException], ...]:
    """What ``main`` reports as one line: every ``UserError``, and a missing file named by a setting."""
    return (UserError, FileNotFoundError)


def build_cli(args: list[str] | None = None, run: bool = True) -> VLMLightningCLI:
    """Build (and by default run) the CLI; raises user errors as exceptions."""
    quiet_libraries()
    return VLMLightningCLI(
        VLMFineTuner,
        DocumentDataModule,
        seed_everything_default=0,
        save_config_callback=RedactingSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        # every logged step converts the logged tensors to floats (a host sync that stalls the GPU queue):
        # every 10 optimizer steps, not 1 (Lightning: 50); set --trainer.log_every_n_steps 1 for short runs
        trainer_defaults={"default_root_dir": "runs", "log_every_n_steps": 10},
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parser_class=ConciseArgumentParser,
        parser_kwargs=parser_kwargs(),
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m vlm_lightning``: user mistakes end with a clear message, exit code 2."""
    loaded = load_env_file(".env")  # never overrides variables already set
    if loaded:
        print(f"[vlm_lightning] loaded from .env: {', '.join(sorted(loaded))}", file=sys.stderr)
    try:
        build_cli(args)
    except _user_errors() as exc:
        print(f"vlm_lightning: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:  # a callback / profiler / logger setting, wrapped by jsonargparse
        message = setting_error_in(exc) or missing_package_message(exc)
        if message is None:
            raise
        print(f"vlm_lightning: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("vlm_lightning"):
            raise
        print(f"vlm_lightning: error: {missing_package_message(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except torch.OutOfMemoryError as exc:
        print(f"vlm_lightning: error: {out_of_memory_advice(exc)}", file=sys.stderr)
        raise SystemExit(3) from None


def out_of_memory_advice(exc: BaseException) -> str:
    """What to change when a step runs out of GPU memory."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
    return (
        f"the GPU ran out of memory ({first}). Knobs that help, cheapest first: lower --data.batch_size and raise "
        "--trainer.accumulate_grad_batches to keep the effective batch; lower the image token budget "
        "(--data.image_max_tokens, i.e. max pixels) or --data.max_image_side; --model.gradient_checkpointing true; "
        "--model.mode qlora (4-bit base); lower --data.max_length or --data.eval_batch_size if it happened in "
        "validation. The last good checkpoint is <run>/last.ckpt."
    )
