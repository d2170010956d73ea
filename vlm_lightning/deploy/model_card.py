"""The README.md (model card) written next to an exported adapter / model, instead of PEFT's blank template."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def last_validation(run_folder: Path) -> dict[str, float]:
    """The last logged value of each ``val/`` metric in the run's metrics.csv (empty when there is none)."""
    path = run_folder / "metrics.csv"
    if not path.is_file():
        return {}
    values: dict[str, float] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key and key.startswith("val/") and value not in ("", None):
                    values[key] = float(value)
    return values


def model_card(
    *,
    kind: str,
    family: str | None,
    mode: str,
    base: str,
    checkpoint: Path,
    global_step: int | None,
    lora: dict[str, Any] | None,
    defaults: dict[str, Any],
    folder: Path,
) -> str:
    """Markdown: what was trained from what, how, how it scored in validation, and how to run it."""
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: peft" if kind == "adapter" else "library_name: transformers",
        "tags: [vlm_lightning, vision-language, document]",
        "---",
        "",
        f"# {folder.name}",
        "",
        f"Fine-tuned with vlm_lightning from `{base}` ({family or 'unknown family'}, {mode} mode, "
        f"{global_step if global_step is not None else '?'} optimizer steps; checkpoint `{checkpoint}`).",
        "",
        "## Task",
        "",
        f"- prompt: {json.dumps(defaults.get('prompt'))}",
    ]
    if defaults.get("system"):
        lines.append(f"- system prompt: {json.dumps(defaults['system'])}")
    budget = [
        f"{k} {defaults[k]}"
        for k in ("image_max_tokens", "image_min_tokens", "max_image_side")
        if defaults.get(k)
    ]
    if budget:
        lines.append(f"- image budget: {', '.join(budget)}")
    if lora:
        shown = ", ".join(f"{k} {lora[k]}" for k in ("r", "alpha", "dropout", "targets") if k in lora)
        lines += ["", "## Training", "", f"- LoRA: {shown}"]
    scores = last_validation(checkpoint.parent)
    if scores:
        lines += ["", "## Validation (last logged values)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(scores.items())]
    model_arg = f"--model {base} --adapter {folder}" if kind == "adapter" else f"--model {folder}"
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"python -m vlm_lightning.infer {model_arg} --image receipt.png",
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = ["last_validation", "model_card"]
