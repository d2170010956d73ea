"""``python -m vlm_lightning synthetic {receipts,captchas,formulas,boxes} --out DIR --n N [--split ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlm_lightning.cli.tool_parser import ToolArgumentParser

from . import write_boxes, write_dataset
from ._common import IMAGES_DIR, parse_split


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"image size too small: {text!r}")
    return width, height


def _split(text: str) -> dict[str, float]:
    try:
        parsed = parse_split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert parsed is not None
    return parsed


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the generator script."""
    parser = ToolArgumentParser(
        prog="python -m vlm_lightning synthetic",
        description="Write a deterministic synthetic dataset: JSONL rows + PNGs under OUT/images/.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{receipts,captchas,formulas,boxes}")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", type=Path, required=True, help="output folder")
        sub.add_argument("--n", type=int, required=True, help="number of samples")
        sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sub.add_argument(
            "--split",
            type=_split,
            default=None,
            help="e.g. train=0.8,val=0.1,test=0.1: one NAME.jsonl per split (default: data.jsonl)",
        )

    rec = kinds.add_parser("receipts", help="shop receipts -> JSON target")
    common(rec)
    rec.add_argument("--size", type=_size, default=None, help="image WIDTHxHEIGHT (default 288x384)")
    rec.add_argument("--font-size", type=int, default=None)
    rec.add_argument("--min-items", type=int, default=None, help="default 1")
    rec.add_argument("--max-items", type=int, default=None, help="default 4")
    rec.add_argument("--noise", action="store_true", help="small rotation, pixel noise, blur")

    cap = kinds.add_parser("captchas", help="captcha images -> the text shown")
    common(cap)
    cap.add_argument("--length", type=int, default=None, help="characters per captcha (default 6)")
    cap.add_argument("--alphabet", default=None, help="characters to draw from (default: digits)")
    cap.add_argument("--size", type=_size, default=None, help="image WIDTHxHEIGHT (default 160x60)")

    frm = kinds.add_parser("formulas", help="rendered formulas -> LaTeX")
    common(frm)
    frm.add_argument("--max-depth", type=int, default=None, help="nesting depth of the grammar (default 2)")
    frm.add_argument("--max-chars", type=int, default=None, help="longest LaTeX answer (default 60)")
    frm.add_argument("--dpi", type=int, default=None, help="render resolution (default 100)")

    box = kinds.add_parser("boxes", help="a solid box on white -> its colour (4 balanced colours)")
    common(box)
    box.add_argument(
        "--size",
        dest="sizes",
        type=_size,
        action="append",
        default=None,
        help="image WIDTHxHEIGHT; repeat to draw each sample's size from several (default 64x64)",
    )
    box.add_argument("--vary-question", action="store_true", help="draw the question's phrasing per sample")
    box.add_argument("--min-fill", type=float, default=None, help="smallest box side / image side (0.6)")
    box.add_argument("--max-fill", type=float, default=None, help="largest box side / image side (0.9)")
    box.add_argument("--jitter", type=int, default=None, help="per-channel shade jitter (default 20)")
    return parser


_COMMON = ("kind", "out", "n", "seed", "split")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the generator script; print every file written."""
    args = build_parser().parse_args(argv)
    options: dict[str, Any] = {
        key: value for key, value in vars(args).items() if key not in _COMMON and value not in (None, False)
    }
    if args.n < 0:
        print("error: --n must be >= 0", file=sys.stderr)
        return 2
    try:
        if args.kind == "boxes":  # balanced answers: each sample's colour follows its index
            paths = write_boxes(args.out, args.n, args.seed, split=args.split, **options)
        else:
            paths = write_dataset(args.kind, args.out, args.n, args.seed, split=args.split, **options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths.values():
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        ids = f" ({rows[0]['id']} .. {rows[-1]['id']})" if rows else ""
        print(f"wrote {len(rows)} {args.kind} rows to {path}{ids}")
    print(f"images in {Path(args.out) / IMAGES_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
