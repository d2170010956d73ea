"""The ``infer`` tool: inference with a base / merged model, an exported adapter or a training checkpoint.

Prompts go through the same path as training and evaluation: a ``Record`` is built and the family's
collator makes the left-padded ``generation_inputs`` (chat template, image-token budget, end-of-turn
stop tokens), so a prompt is tokenized exactly as during validation.

    # one image, tokens streamed to the terminal as they are generated
    python -m vlm_lightning.infer --model Qwen/Qwen2-VL-2B-Instruct --adapter exports/receipts \\
        --image receipt.png --prompt "Extract the information in this document as JSON."
    # a folder of images (or a JSONL file) -> predictions.jsonl + predictions.csv
    python -m vlm_lightning.infer --model exports/receipts/merged --images-dir scans/ --out preds/predictions.jsonl

Defaults for the prompt, system prompt and image budget come from the training run when known (the
checkpoint, or the ``vlm_lightning_export.json`` that ``vlm_lightning.deploy.export`` writes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import get_args

import torch

from vlm_lightning.cli.library_noise import quiet_libraries
from vlm_lightning.cli.tool_parser import ToolArgumentParser
from vlm_lightning.data.image_files import image_problem
from vlm_lightning.data.records import DataValidationError, read_jsonl
from vlm_lightning.deploy.prediction_files import IMAGE_SUFFIXES, records_from_folder, write_predictions
from vlm_lightning.deploy.predictor import DEFAULT_PROMPT, GenerationSettings, Predictor
from vlm_lightning.errors import UserError
from vlm_lightning.generation import DEFAULT_DECODING_COMPILER, DecodingCompiler, GenerationCache


def _parser() -> argparse.ArgumentParser:
    parser = ToolArgumentParser(
        prog="python -m vlm_lightning infer",
        description=__doc__,
    )
    parser.add_argument("--model", required=True, help="base model or merged export (folder or hub id)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--adapter", type=Path, help="a PEFT adapter folder (python -m vlm_lightning.deploy.export)"
    )
    weights.add_argument("--ckpt", type=Path, help="a vlm_lightning training checkpoint (best.ckpt)")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--image", type=Path, help="one image: the answer is streamed to the terminal")
    inputs.add_argument("--images-dir", type=Path, help="batch mode over the images of a folder")
    inputs.add_argument("--jsonl", type=Path, help="batch mode over a JSONL file (the training format)")
    parser.add_argument(
        "--prompt", help="instruction (default: the training run's, else a JSON extraction prompt)"
    )
    parser.add_argument("--system", help="system prompt (default: the training run's, if any)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="generation budget (default: the training run's, else 256)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    parser.add_argument("--no-stream", action="store_true", help="print the answer once it is complete")
    parser.add_argument("--out", type=Path, default=Path("predictions.jsonl"), help="batch mode output JSONL")
    parser.add_argument("--batch-size", type=int, default=4, help="batch mode batch size")
    parser.add_argument(
        "--cache",
        choices=get_args(GenerationCache),
        default="auto",
        help="batch mode key/value cache: static (compiled decoding step, CUDA) or dynamic; auto: static on CUDA "
        "for 6 batches or more",
    )
    parser.add_argument(
        "--decoding-compiler",
        choices=get_args(DecodingCompiler),
        default=DEFAULT_DECODING_COMPILER,
        help="how the static cache's decoding step compiles: inductor (generated kernels, the fastest steps) or "
        "cudagraphs (PyTorch's kernels as CUDA graphs: no code generation, a shorter first batch)",
    )
    parser.add_argument(
        "--on-bad-file",
        choices=["skip", "stop"],
        default="skip",
        help="batch mode: a file that cannot be read is listed (stderr and <out>.bad_files.txt) and the rest are "
        "inferred (skip, the default), or nothing runs (stop)",
    )
    parser.add_argument("--image-max-tokens", type=int, help="override the image-token budget")
    parser.add_argument("--image-min-tokens", type=int)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m vlm_lightning.infer``."""
    quiet_libraries()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.temperature < 0 or not 0 < args.top_p <= 1 or not 0 <= args.min_p < 1:
        parser.error("need temperature >= 0, 0 < top-p <= 1, 0 <= min-p < 1")
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    for flag, path, is_dir in (("--image", args.image, False), ("--images-dir", args.images_dir, True),
                               ("--jsonl", args.jsonl, False)):  # fmt: skip
        if path is not None and not (path.is_dir() if is_dir else path.is_file()):
            wanted = "folder" if is_dir else "file"
            found = "a file" if path.is_file() else "a folder" if path.is_dir() else None
            parser.error(f"{flag} {path}: " + (f"{found}, not a {wanted}" if found else f"no such {wanted}"))
    if args.images_dir is not None and not any(
        p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in args.images_dir.iterdir()
    ):  # before the model loads
        parser.error(f"--images-dir {args.images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    if args.image is not None and (reason := image_problem(args.image)):
        parser.error(f"--image: {reason}")
    try:
        predictor = Predictor.load(
            args.model,
            adapter=args.adapter,
            ckpt=args.ckpt,
            device=args.device,
            dtype=args.dtype,
            image_max_tokens=args.image_max_tokens,
            image_min_tokens=args.image_min_tokens,
            trust_remote_code=args.trust_remote_code,
        )
        torch.manual_seed(args.seed)
        budget = args.max_new_tokens or predictor.defaults.get("max_new_tokens") or 256  # as test generated
        settings = GenerationSettings(
            budget,
            args.temperature,
            args.top_p,
            args.min_p,
            cache=args.cache,
            compiler=args.decoding_compiler,
        )
        if args.image is not None:
            _single(predictor, args, settings)
        else:
            _batch(predictor, args, settings)
    except (UserError, FileNotFoundError) as exc:
        print(f"vlm_lightning infer: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _single(predictor: Predictor, args: argparse.Namespace, settings: GenerationSettings) -> None:
    record = predictor.record(args.image, args.prompt, args.system)
    start = time.perf_counter()
    if args.no_stream:
        print(predictor.generate([record], settings)[0], flush=True)
    else:
        for piece in predictor.stream(record, settings):
            print(piece, end="", flush=True)
        print(flush=True)
    print(f"[{time.perf_counter() - start:.2f} s]", file=sys.stderr)


def _batch(predictor: Predictor, args: argparse.Namespace, settings: GenerationSettings) -> None:
    prompt = args.prompt or predictor.defaults.get("prompt") or DEFAULT_PROMPT
    system = args.system if args.system is not None else predictor.defaults.get("system")
    if args.images_dir is not None:
        records, problems = records_from_folder(args.images_dir, prompt, system)
    else:
        records, problems = read_jsonl(
            args.jsonl, default_prompt=prompt, default_system=system, require_answer=False
        )
    if problems and (args.on_bad_file == "stop" or not records):
        raise DataValidationError(problems)
    if problems:
        listed = Path(args.out).with_suffix(".bad_files.txt")
        listed.parent.mkdir(parents=True, exist_ok=True)
        listed.write_text("".join(f"{p}\n" for p in problems))
        for problem in problems[:10]:
            print(f"[vlm_lightning] skipped: {problem}", file=sys.stderr)
        print(
            f"[vlm_lightning] {len(problems)} bad {'file' if args.images_dir is not None else 'row'}(s) skipped "
            f"(listed in {listed}); "
            f"inferring the other {len(records)} (--on-bad-file stop to refuse instead)",
            file=sys.stderr,
        )
    start = time.perf_counter()
    rows = predictor.predict(records, settings, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    jsonl, csv_path = write_predictions(rows, args.out)
    print(
        f"[vlm_lightning] {len(rows)} images in {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.2f} images/s)"
    )
    print(f"[vlm_lightning] predictions: {jsonl}")
    print(f"[vlm_lightning] predictions_csv: {csv_path}")


__all__ = ["GenerationSettings", "Predictor", "main", "records_from_folder", "write_predictions"]

if __name__ == "__main__":
    main()
