"""Export a training checkpoint as a PEFT adapter folder, a merged model folder and / or a zip archive.

Checkpoints written by ``VLMFineTuner`` hold only the trainable weights plus the run's hyper-parameters;
the base model is rebuilt from ``name_or_path`` (or ``--base``), the weights are loaded back, and the
result is saved in the plain Hugging Face formats:

* LoRA / QLoRA runs: ``OUT/`` is a PEFT adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``) with the processor, loadable with
  ``PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), OUT)``;
  ``--merge`` also writes ``OUT/merged/``, a full model with the adapter merged in. QLoRA adapters are
  merged into a fresh 16-bit copy of the base loaded without quantization (bf16 on GPU, fp32 on CPU),
  never into 4-bit weights.
* Full runs: ``OUT/`` is a full model folder with the processor.

``--zip`` writes ``OUT.zip`` next to the folder (the adapter, or the full model; ``merged/`` is left
out). ``OUT/vlm_lightning_export.json`` records the family, mode, base and the training prompt / image
budget, so ``python -m vlm_lightning.infer`` can reuse them.

    python -m vlm_lightning.deploy.export --ckpt runs/version_0/best.ckpt --out exports/receipts --merge --zip
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlm_lightning.checkpoints.io import validate_checkpoint
from vlm_lightning.cli.library_noise import quiet_libraries
from vlm_lightning.cli.tool_parser import ToolArgumentParser
from vlm_lightning.deploy.model_card import model_card
from vlm_lightning.errors import UserError
from vlm_lightning.models.build import build_model
from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.loading import (
    DTYPES,
    Dtype,
    ModelLoadError,
    family_of,
)
from vlm_lightning.models.peft_setup import LoraSettings, apply_training_mode
from vlm_lightning.training.checkpoint_state import PROMPT_SETTINGS

EXPORT_INFO = "vlm_lightning_export.json"
PEFT_KEY_MARKERS = ("lora_", "modules_to_save")


class ExportError(UserError, RuntimeError):
    """The checkpoint cannot be exported as asked; says why."""


@dataclass
class CheckpointInfo:
    """What a vlm_lightning checkpoint says about its run."""

    path: Path
    name_or_path: str
    mode: str
    family: str | None
    lora: LoraSettings
    hparams: dict[str, Any]
    data_hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    global_step: int | None = None

    def training_defaults(self) -> dict[str, Any]:
        """Prompt, system prompt and image budget the run was trained with (for inference defaults)."""
        out = {k: self.data_hparams.get(k) for k in PROMPT_SETTINGS}
        out["max_new_tokens"] = self.hparams.get("generate_max_new_tokens")
        return out


def load_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read a vlm_lightning checkpoint with ``torch.load(weights_only=True)`` (no arbitrary unpickling)."""
    path = Path(path)
    ckpt = validate_checkpoint(path)  # as --ckpt_path: missing, truncated, unsafe or foreign files refused
    info = ckpt.get("vlm_lightning")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if info is None or "name_or_path" not in hparams:
        raise ExportError(f"{path} was not written by vlm_lightning (no 'vlm_lightning' / hyper_parameters)")
    lora = hparams.get("lora")
    if lora is None:
        lora = LoraSettings()
    elif isinstance(lora, dict):
        known = {f.name for f in dataclasses.fields(LoraSettings)}
        lora = LoraSettings(**{k: v for k, v in lora.items() if k in known})
    state_dict = ckpt.get("state_dict") or {}
    if not state_dict:
        raise ExportError(f"{path} holds no trained weights")
    expected = info.get("trainable_keys")
    if expected is not None and expected != len(state_dict):
        raise ExportError(
            f"{path}: {len(state_dict)} weights stored but {expected} expected (truncated file?)"
        )
    return CheckpointInfo(
        path=path,
        name_or_path=str(hparams["name_or_path"]),
        mode=str(info.get("mode", hparams.get("mode", "lora"))),
        family=info.get("family"),
        lora=lora,
        hparams=hparams,
        data_hparams=dict(ckpt.get("datamodule_hyper_parameters") or {}),
        state_dict=state_dict,
        global_step=ckpt.get("global_step"),
    )


def resolve_dtype(
    info: CheckpointInfo, device: str | torch.device, dtype: Dtype | None = None
) -> torch.dtype:
    """Export dtype: ``dtype`` if given; for QLoRA / ``auto`` bf16 on GPU, fp32 on CPU; else the run's dtype."""
    name = dtype or ("auto" if info.mode == "qlora" else info.hparams.get("dtype", "auto"))
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[name]


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def _split_weights(
    state_dict: dict[str, torch.Tensor], peft: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(PEFT weights keyed like the PeftModel, base weights keyed like the bare model)."""
    peft_sd: dict[str, torch.Tensor] = {}
    base_sd: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = _strip(key, "model.")
        if peft and any(m in key for m in PEFT_KEY_MARKERS):
            peft_sd[key] = value
        else:
            base_sd[_strip(key, "base_model.model.").replace(".base_layer.", ".")] = value
    return peft_sd, base_sd


def _extra_trained_modules(info: CheckpointInfo, facts: FamilyFacts, base_keys: list[str]) -> list[str]:
    """Base modules trained next to LoRA (vision tower / projector): saved in the adapter as modules_to_save."""
    if not base_keys:
        return []
    if info.lora.vision and info.hparams.get("train_vision"):
        raise ExportError(
            "this run trained the vision tower fully and with LoRA at once; it cannot be saved as a PEFT "
            "adapter (export the full model with --merge instead)"
        )
    candidates = [facts.vision_tower] if info.hparams.get("train_vision") else []
    if info.hparams.get("train_projector"):
        candidates.append(facts.projector)
    # keep the outermost modules only (the projector may live inside the vision tower)
    modules = [m for m in candidates if not any(m != o and m.startswith(o + ".") for o in candidates)]
    uncovered = [k for k in base_keys if not any(k.startswith(m + ".") for m in modules)]
    if uncovered:
        raise ExportError(f"trained weights outside LoRA and known modules, e.g. {uncovered[:3]}")
    return modules


def rebuild_model(
    info: CheckpointInfo,
    *,
    base: str | None = None,
    device: str | torch.device = "cpu",
    dtype: Dtype | None = None,
) -> tuple[torch.nn.Module, Any, FamilyFacts]:
    """Rebuild the trained model from a checkpoint, unquantized: (PeftModel or full model, processor, facts).

    The base comes from ``base`` (default: the run's ``name_or_path``) and is never quantized, so a
    QLoRA adapter lands on a 16-bit base. The processor gets the run's image-token budget.
    """
    base = base or info.name_or_path
    trust = bool(info.hparams.get("trust_remote_code", False))
    facts = family_of(base, trust)
    if info.family not in (None, facts.name):
        raise ExportError(f"checkpoint is a {info.family} run but {base} is a {facts.name} model")
    torch_dtype = resolve_dtype(info, device, dtype)
    dtype_name = next(k for k, v in DTYPES.items() if v == torch_dtype)
    built = build_model(
        base,
        mode=None,  # the trained weights are loaded below; the base is never quantized here
        dtype=dtype_name,  # type: ignore[arg-type]
        attn_implementation=info.hparams.get("attn_implementation"),
        trust_remote_code=trust,
        image_max_tokens=info.data_hparams.get("image_max_tokens"),
        image_min_tokens=info.data_hparams.get("image_min_tokens"),
    )
    model, processor = built.model, built.processor
    peft = info.mode in ("lora", "qlora")
    peft_sd, base_sd = _split_weights(info.state_dict, peft)
    if base_sd:
        _load_exactly(model, base_sd, what="base")
    if peft:
        extra = _extra_trained_modules(info, facts, list(base_sd))
        lora = dataclasses.replace(
            info.lora, extra_modules_to_save=[*info.lora.extra_modules_to_save, *extra]
        )
        model = apply_training_mode(model, facts, "lora", lora)
        _load_exactly(model, peft_sd, what="adapter", require=("lora_",))
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    return model, processor, facts


def _load_exactly(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str, require: tuple[str, ...] = ()
) -> None:
    """Load ``weights``; every one must land, and every parameter named with ``require`` must be given."""
    own = model.state_dict()
    unexpected = sorted(set(weights) - set(own))
    missing = sorted(k for k in own if require and any(r in k for r in require) and k not in weights)
    if unexpected or missing:
        raise ExportError(
            f"checkpoint {what} weights do not fit the rebuilt model (unexpected e.g. {unexpected[:3]}, "
            f"missing e.g. {missing[:3]}): other LoRA settings or another base model?"
        )
    bad = [k for k, v in weights.items() if v.shape != own[k].shape]
    if bad:
        raise ExportError(f"checkpoint {what} weights have other shapes than the model, e.g. {bad[:3]}")
    model.load_state_dict(weights, strict=False)


def _write_info(folder: Path, info: CheckpointInfo, kind: str, base: str, dtype: torch.dtype) -> None:
    payload = {
        "kind": kind,
        "dtype": str(dtype).removeprefix("torch."),  # inference loads the weights in it by default
        "family": info.family,
        "mode": info.mode,
        "base_model": base,
        "checkpoint": str(info.path),
        "global_step": info.global_step,
        "lora": dataclasses.asdict(info.lora) if info.mode != "full" else None,
        **info.training_defaults(),
    }
    (folder / EXPORT_INFO).write_text(json.dumps(payload, indent=2) + "\n")
    card = model_card(
        kind=kind, family=info.family, mode=info.mode, base=base, checkpoint=info.path,
        global_step=info.global_step, lora=payload["lora"], defaults=info.training_defaults(), folder=folder,
    )  # fmt: skip
    (folder / "README.md").write_text(card)


def zip_folder(folder: Path, archive: Path, exclude: tuple[str, ...] = ()) -> Path:
    """Zip the files of ``folder`` (top-level names in ``exclude`` are left out) into ``archive``."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and rel.parts[0] not in exclude:
                zf.write(path, rel.as_posix())
    return archive


def hub_token() -> str:
    """The HF_TOKEN to push with; refuses clearly without one or when offline."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ExportError(
            "--push-to-hub needs a Hugging Face write token in the HF_TOKEN environment variable"
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ExportError("--push-to-hub is not possible with HF_HUB_OFFLINE=1")
    return token


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    *,
    merge: bool = False,
    zip_archive: bool = False,
    push_to_hub: str | None = None,
    private: bool = True,
    base: str | None = None,
    device: str | None = None,
    dtype: Dtype | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Export ``ckpt`` into ``out`` (see the module docstring); return what was written by name.

    An ``out`` that holds files already is refused (an earlier export's ``merged/`` would stay beside this
    one) unless ``overwrite``, which empties it first; ``out`` is created only once the model is rebuilt."""
    out = Path(out)
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: give a folder")
    if held and not overwrite:
        raise ExportError(
            f"--out {out} holds files already ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): give a "
            "new folder, or --overwrite to replace its contents"
        )
    if held and not (out / EXPORT_INFO).is_file():  # --overwrite empties an earlier export, nothing else
        raise ExportError(
            f"--out {out} holds files but no {EXPORT_INFO}: it is no earlier export; give a new folder"
        )
    token = hub_token() if push_to_hub else None
    info = load_checkpoint(ckpt)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, processor, _ = rebuild_model(info, base=base, device=device, dtype=dtype)
    except ModelLoadError as exc:
        hint = "" if base else " (pass --base to point at the base model if it moved)"
        raise ExportError(f"{exc}{hint}") from exc
    if held:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    weight_dtype = next(model.parameters()).dtype
    base_name = base or info.name_or_path
    if Path(base_name).is_dir():  # the adapter config and card name the base wherever they are used from
        base_name = str(Path(base_name).resolve())
    if hasattr(model, "peft_config"):
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_name
    written: dict[str, Path] = {}
    if info.mode == "full":
        model.save_pretrained(out)
        processor.save_pretrained(out)
        _write_info(out, info, "full", base_name, weight_dtype)
        written["model"] = out
        if merge:
            print("[vlm_lightning] full-mode run: the model folder is already complete, nothing to merge")
    else:
        model.save_pretrained(out)
        processor.save_pretrained(out)
        _write_info(out, info, "adapter", base_name, weight_dtype)
        written["adapter"] = out
    if zip_archive:
        written["zip"] = zip_folder(out, out.with_name(out.name + ".zip"), exclude=("merged",))
    if push_to_hub:
        model.push_to_hub(push_to_hub, token=token, private=private)
        processor.push_to_hub(push_to_hub, token=token, private=private)
        print(f"[vlm_lightning] pushed {out} to https://huggingface.co/{push_to_hub}")
    if merge and info.mode != "full":
        merged_dir = out / "merged"
        merged = model.merge_and_unload()
        merged.save_pretrained(merged_dir)
        processor.save_pretrained(merged_dir)
        _write_info(merged_dir, info, "merged", base_name, weight_dtype)
        written["merged"] = merged_dir
    return written


def _describe(path: Path) -> str:
    if path.is_file():
        return f"{path} ({path.stat().st_size / 1e6:.1f} MB)"
    files = sorted(p for p in path.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    return f"{path}/ ({size / 1e6:.1f} MB: {', '.join(p.name for p in files)})"


def main(argv: list[str] | None = None) -> None:
    """``python -m vlm_lightning.deploy.export``."""
    quiet_libraries()
    parser = ToolArgumentParser(
        prog="python -m vlm_lightning export",
        description=__doc__,
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="a vlm_lightning checkpoint (best.ckpt)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (the adapter / model)")
    parser.add_argument("--merge", action="store_true", help="also write OUT/merged, the adapter merged in")
    parser.add_argument("--zip", action="store_true", help="also write OUT.zip")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="push the adapter (or full model); needs HF_TOKEN"
    )
    parser.add_argument("--public", action="store_true", help="make a new hub repository public")
    parser.add_argument("--base", help="base model folder / hub id (default: the run's model.name_or_path)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weight dtype of the written models")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the contents of an OUT that has files"
    )
    args = parser.parse_args(argv)
    try:
        written = export_checkpoint(
            args.ckpt,
            args.out,
            merge=args.merge,
            zip_archive=args.zip,
            push_to_hub=args.push_to_hub,
            private=not args.public,
            base=args.base,
            device=args.device,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
    except (UserError, OSError) as exc:
        print(f"vlm_lightning export: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for name, path in written.items():
        print(f"[vlm_lightning] {name}: {_describe(path)}")


if __name__ == "__main__":
    main()
