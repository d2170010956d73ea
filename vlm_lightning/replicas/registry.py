"""Every family's replica builder, and ``build_tiny``: build one into a folder (reused when complete)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlm_lightning.replicas.gemma3 import build_gemma3
from vlm_lightning.replicas.gemma4 import build_gemma4
from vlm_lightning.replicas.granite_docling import build_granite_docling
from vlm_lightning.replicas.idefics3 import build_idefics3, build_smolvlm
from vlm_lightning.replicas.internvl import build_internvl
from vlm_lightning.replicas.lfm2 import build_lfm2_vl
from vlm_lightning.replicas.lfm3 import build_lfm3_vl
from vlm_lightning.replicas.paddleocr_vl import build_paddleocr_vl
from vlm_lightning.replicas.paligemma import build_paligemma
from vlm_lightning.replicas.qwen import (
    REAL_TOKENIZER_FAMILIES,
    build_qwen2_5_vl,
    build_qwen2_vl,
    build_qwen3_vl,
)
from vlm_lightning.replicas.qwen3_5 import build_qwen3_5

BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
    "qwen3_5": build_qwen3_5,
    "lfm2_vl": build_lfm2_vl,
    "lfm3_vl": build_lfm3_vl,
    "paligemma": build_paligemma,
    "idefics3": build_idefics3,
    "gemma3": build_gemma3,
    "gemma4": build_gemma4,
    "smolvlm": build_smolvlm,
    "internvl": build_internvl,
    "paddleocr_vl": build_paddleocr_vl,
    "granite_docling": build_granite_docling,
}


def build_tiny(family: str, out_dir: str | Path, **kwargs) -> Path:
    """Build the tiny replica of ``family`` into ``out_dir`` (reused when already complete)."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny replica for family '{family}'; known: {', '.join(sorted(BUILDERS))}")
    kind = kwargs.get("tokenizer", "byte")
    if kind != "byte" and family not in REAL_TOKENIZER_FAMILIES:
        raise ValueError(
            f"tokenizer='{kind}' is only available for {', '.join(REAL_TOKENIZER_FAMILIES)}, not '{family}'"
        )
    out = Path(out_dir)
    stamp = family + ("" if kind == "byte" else f"\ntokenizer={kind}") + "\n"
    if (out / "config.json").is_file() and (out / ".complete").is_file():
        # a folder built with another tokenizer is rebuilt rather than returned
        if ("tokenizer=" in (out / ".complete").read_text()) == (kind != "byte"):
            return out
    out.mkdir(parents=True, exist_ok=True)
    BUILDERS[family](out, **kwargs)
    (out / ".complete").write_text(stamp)
    return out
