"""Real-size VLM architectures with random weights, built from their published configs (no hub, no weights).

For throughput benchmarks the cost of a step depends on the architecture, not on the weights, so each
builder here reproduces a checkpoint's ``config.json`` numbers, pairs them with a byte-level tokenizer
(``vlm_lightning.replicas.common.byte_level_tokenizer``: one token per byte, the family's special tokens)
whose embedding table is padded to the real vocabulary size (so the embedding and lm_head cost is real),
and saves only the small part to disk: ``config.json`` plus the processor (tokenizer, chat template,
image processor). The model itself is created in memory on the target device with ``from_config``
(random weights, bf16 on GPU), never saved: no 4 GB write / read.

    python -m vlm_lightning.replicas.real_size qwen2_vl_2b --count     # parameter counts (meta device)
    python -m vlm_lightning.replicas.real_size lfm2_vl_1_6b --out artifacts/real-lfm2-vl

The architectures, their numbers (each with its source) and their folder writers are in
``real_size_configs``; parameter counting is in ``real_size_counts``. ``shrink=True`` keeps the same classes,
tokenizer and processor but tiny dimensions, to exercise a family's code path on CPU in seconds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from vlm_lightning.cli.tool_parser import ToolArgumentParser
from vlm_lightning.models.families import FAMILIES, FamilyFacts
from vlm_lightning.replicas.real_size_configs import REAL_ARCHITECTURES
from vlm_lightning.replicas.real_size_counts import ParamCounts, parameter_counts


def family_facts(family: str) -> FamilyFacts:
    """The family's facts from ``FAMILIES`` (by name or model type)."""
    if family in FAMILIES:
        return FAMILIES[family]
    for facts in FAMILIES.values():
        if family in facts.model_types:
            return facts
    raise ValueError(f"unknown family {family!r}")


def build_real_folder(name: str, out_dir: str | Path, *, shrink: bool = False) -> Path:
    """Write ``config.json`` + processor of a real architecture (no weights) into ``out_dir``."""
    if name not in REAL_ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(REAL_ARCHITECTURES))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = REAL_ARCHITECTURES[name]
    config = arch.write(out, shrink)
    config.save_pretrained(out)
    (out / "real_architecture.json").write_text(
        json.dumps({"name": name, "family": arch.family, "checkpoint": arch.checkpoint, "shrink": shrink})
        + "\n"
    )
    return out


def build_model(
    config: Any,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> torch.nn.Module:
    """Instantiate ``config`` with random weights directly on ``device`` (same seed -> same weights)."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    return model


def count_on_meta(name: str, *, shrink: bool = False) -> ParamCounts:
    """Parameter counts of a real architecture without allocating it (meta device)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_real_folder(name, tmp, shrink=shrink)
        config = AutoConfig.from_pretrained(folder)
    model = build_model(config, "meta", torch.bfloat16)
    return parameter_counts(model, family_facts(REAL_ARCHITECTURES[name].family))


def main(argv: list[str] | None = None) -> None:
    """CLI: write a real architecture's folder and/or print its parameter counts."""
    parser = ToolArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(REAL_ARCHITECTURES))
    parser.add_argument("--out", type=Path, help="folder for config.json + processor (no weights)")
    parser.add_argument(
        "--count", action="store_true", help="print parameter counts (meta device, no memory)"
    )
    parser.add_argument("--shrink", action="store_true", help="tiny dimensions, same classes")
    args = parser.parse_args(argv)
    if args.out:
        print(
            f"{args.name}: config + processor written to {build_real_folder(args.name, args.out, shrink=args.shrink)}"
        )
    if args.count or not args.out:
        print(f"{args.name}: {count_on_meta(args.name, shrink=args.shrink).summary()}")


if __name__ == "__main__":
    main()
