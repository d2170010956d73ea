"""Settings checked against each other and against the data before the model loads.

Each check raises ``SettingError`` with what to set, instead of a traceback minutes into a run: LoRA
targets that are neither a preset nor a regex, metrics that need JSON answers on plain-text data, and a
monitored key (checkpoint / early stopping) that the chosen metrics never log.
"""

from __future__ import annotations

import difflib
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlm_lightning.data.records import Record
from vlm_lightning.errors import SettingError
from vlm_lightning.metrics import METRICS, build_metrics

LORA_PRESETS = ("attention", "attention_mlp", "all_linear")
#: keys the module logs whatever the metrics (``VLMFineTuner``)
ALWAYS_LOGGED = ("val/loss", "val/token_acc", "train/loss", "train/token_acc", "train/grad_norm")
_REGEX_SYNTAX = re.compile(r"[.*+?()\[\]|\\^$]")


def check_lora_targets(targets: str) -> None:
    """Refuse a ``model.lora.targets`` that is neither a preset nor a regex (e.g. a typo of a preset).

    PEFT full-matches a string against dotted module names, so a bare word without regex syntax can
    match no layer of a VLM.
    """
    if targets in LORA_PRESETS or _REGEX_SYNTAX.search(targets):
        return
    close = difflib.get_close_matches(targets, LORA_PRESETS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise SettingError(
        f"model.lora.targets '{targets}' is neither a preset ({', '.join(LORA_PRESETS)}) nor a regex over "
        f"module names: {hint}a regex looks like '.*language_model.*\\.(q_proj|v_proj)'"
    )


def precision_notes(trainer: Mapping[str, object], model: Mapping[str, object], cuda: bool) -> list[str]:
    """What the start of a run says about its precision settings (no error: they run, not as one may expect)."""
    precision, dtype = str(trainer.get("precision")), model.get("dtype")
    notes = []
    if precision in ("32", "32-true", "64", "64-true") and dtype in ("bfloat16", "float16"):
        notes.append(
            f"trainer.precision {precision} with model.dtype {dtype}: the base weights stay 16-bit (set "
            "--model.dtype float32 for 32-bit weights)"
        )
    accelerator = trainer.get("accelerator", "auto")
    if precision.startswith("bf16") and (accelerator == "cpu" or (accelerator == "auto" and not cuda)):
        notes.append(
            f"trainer.precision {precision} on the CPU: bf16 autocast runs there, slowly and not as a GPU rounds "
            "(--trainer.precision 32-true --model.dtype float32 for float32)"
        )
    return notes


def check_run_folder(root: str) -> None:
    """Refuse a ``trainer.default_root_dir`` that cannot be created or written (checked by writing a file).

    A folder that does not exist yet is not created here: its nearest existing parent is checked instead,
    so a run stopped by a later start-up check leaves no empty folder behind (training creates it).
    """
    folder = Path(root).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SettingError(
            f"trainer.default_root_dir '{root}' is the run folder (checkpoints, logs, reports) and cannot be "
            f"used: {reason}: set --trainer.default_root_dir to a folder you can write"
        ) from None


def check_val_check_interval(interval: object) -> None:
    """A float ``trainer.val_check_interval`` is a fraction of an epoch, in (0, 1] (an int counts batches):
    refused at start-up, not with Lightning's traceback after the model has loaded."""
    if isinstance(interval, float) and not 0.0 < interval <= 1.0:
        whole = (
            f" or the whole number {int(interval)} (batches)"
            if interval > 1 and interval.is_integer()
            else ""
        )
        raise SettingError(
            f"trainer.val_check_interval {interval} is a fraction of an epoch and must be in (0, 1]: set e.g. 0.5 "
            f"(twice per epoch), 1.0 (once){whole}, or a whole number of training batches"
        )


def check_metrics_fit_answers(metric_names: Sequence[str], splits: Mapping[str, list[Record]]) -> None:
    """Refuse JSON metrics (``json``, ``receipt``, ``tree``) on splits whose answers are not JSON."""
    needing = [name for name in metric_names if getattr(METRICS.get(name), "needs_json_references", False)]
    if not needing:
        return
    for split, records in splits.items():
        plain = []
        for record in records:
            for answer in record.answers:
                try:
                    json.loads(answer)
                except ValueError:
                    plain.append((record, answer))
                    break
        if plain:
            shown = "; ".join(f"{r.where} {a[:40]!r}" for r, a in plain[:3])
            raise SettingError(
                f"model.metrics {needing} compare JSON answers, but {len(plain)} of {len(records)} rows of "
                f"data.{split} have plain-text answers (e.g. {shown}): choose metrics for text answers "
                "(anls, exact_match, relaxed_accuracy, latex) with --model.metrics, or give JSON answers"
            )


def logged_metric_keys(metric_names: Sequence[str], answers: Sequence[Sequence[str]]) -> list[str]:
    """The keys the chosen metrics log for this data (``val/<key>``), found by scoring the answers."""
    metrics = build_metrics(list(metric_names), sync_on_compute=False)
    if not answers:  # no validation answers: the keys of an empty update (compute() before update() warns)
        answers = [[""]]
    metrics.update([a[0] for a in answers], [list(a) for a in answers])
    return sorted(metrics.compute())


def check_monitor(
    monitor: str | None,
    metric_names: Sequence[str],
    val_generate: bool,
    answers: Sequence[Sequence[str]],
) -> None:
    """Refuse a checkpoint / early-stopping monitor that no chosen metric logs."""
    if not monitor or monitor in ALWAYS_LOGGED or monitor.startswith(("lr-", "train/")):
        return
    keys = [f"val/{k}" for k in logged_metric_keys(metric_names, answers)]
    if monitor in keys and val_generate:
        return
    if monitor in keys:
        raise SettingError(
            f"--checkpoint.monitor {monitor} is computed from generated text, but model.val_generate is "
            "false: set --model.val_generate true or monitor val/loss"
        )
    available = [k for k in ALWAYS_LOGGED if k.startswith("val/")] + (keys if val_generate else [])
    close = difflib.get_close_matches(monitor, available, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise SettingError(
        f"--checkpoint.monitor {monitor} is not logged with model.metrics {list(metric_names)}{hint}: "
        f"monitor one of {', '.join(available)} (early stopping follows --checkpoint.monitor)"
    )


def first_answers(records: Sequence[Record], n: int = 32) -> list[list[str]]:
    """The answers of the first ``n`` records (enough to learn which per-field keys are logged)."""
    return [list(r.answers) for r in records[:n] if r.answers]


__all__ = [
    "check_lora_targets",
    "check_run_folder",
    "check_metrics_fit_answers",
    "check_monitor",
    "first_answers",
    "logged_metric_keys",
    "precision_notes",
]
