"""Inference with a base / merged model, an exported adapter or a training checkpoint.

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
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlm_lightning.cli.library_noise import quiet_libraries
from vlm_lightning.data.datamodule import RecordDataset
from vlm_lightning.data.records import DataValidationError, Record, image_problem, read_jsonl, record_from_row
from vlm_lightning.deploy.export import EXPORT_INFO, ExportError, load_checkpoint, rebuild_model
from vlm_lightning.errors import UserError
from vlm_lightning.generation import end_of_turn_ids, generate_batch
from vlm_lightning.models.build import build_model
from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.loading import (
    Dtype,
    family_of,
    make_collator,
)

DEFAULT_PROMPT = "Extract the information in this document as JSON."
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class GenerationSettings:
    """Decoding settings; ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate_batch`` / ``model.generate``."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            out.update(do_sample=True, temperature=self.temperature)
            if self.top_p < 1:
                out["top_p"] = self.top_p
            if self.min_p > 0:
                out["min_p"] = self.min_p
        return out


def _read_defaults(folder: str | Path | None) -> dict[str, Any]:
    path = Path(folder) / EXPORT_INFO if folder else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text())


def _check_adapter(adapter: Path, model: str, family: str) -> None:
    """Refuse an adapter folder that is not one, or that was trained on another family than ``model``."""
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(
            f"--adapter {adapter} is not a PEFT adapter folder (no adapter_config.json): "
            "give the folder written by python -m vlm_lightning.deploy.export"
        )
    trained = _read_defaults(adapter).get("family")
    if trained and trained != family:
        base = _read_defaults(adapter).get("base_model")
        raise ExportError(
            f"--adapter {adapter} was trained on a {trained} model ({base}); --model {model} is a {family} "
            "model: give the base model the adapter was trained from"
        )


class Predictor:
    """A loaded model + processor that generates from images and prompts like the training loop does."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        facts: FamilyFacts,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.facts = facts
        self.defaults = dict(defaults or {})
        self.stop_ids = end_of_turn_ids(self.tokenizer, facts.end_of_turn)
        # inference never cuts a prompt: no training length limit here
        self.collator = make_collator(processor, facts, max_length=1 << 30)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        adapter: str | Path | None = None,
        ckpt: str | Path | None = None,
        device: str | None = None,
        dtype: Dtype = "auto",
        image_max_tokens: int | None = None,
        image_min_tokens: int | None = None,
        trust_remote_code: bool = False,
    ) -> Predictor:
        """Load ``model`` (base or merged folder / hub id), optionally with a PEFT ``adapter`` or a ``ckpt``."""
        if adapter and ckpt:
            raise ValueError("give --adapter or --ckpt, not both")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if ckpt:
            info = load_checkpoint(ckpt)
            net, processor, facts = rebuild_model(
                info, base=model, device=device, dtype=None if dtype == "auto" else dtype
            )
            defaults = info.training_defaults()
        else:
            if adapter:
                _check_adapter(Path(adapter), model, family_of(model, trust_remote_code).name)
            defaults = _read_defaults(adapter) or _read_defaults(model if Path(model).is_dir() else None)
            built = build_model(
                model,
                mode=None,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                image_max_tokens=defaults.get("image_max_tokens"),
                image_min_tokens=defaults.get("image_min_tokens"),
            )
            net, processor, facts = built.model, built.processor, built.facts
            if adapter:
                from peft import PeftModel

                net = PeftModel.from_pretrained(net, str(adapter))
            net.to(device)
        if (image_max_tokens or image_min_tokens) and facts.set_image_tokens is not None:
            facts.set_image_tokens(processor, image_min_tokens, image_max_tokens)
        return cls(net, processor, facts, defaults)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    # --- records and batches ----------------------------------------------------------------
    def record(
        self,
        image: str | Path | Image.Image,
        prompt: str | None = None,
        system: str | None = None,
        record_id: str = "image",
    ) -> Record:
        """A prompt-only Record (no answer) for one image, with the run's prompt / system as defaults."""
        system = system if system is not None else self.defaults.get("system")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt or self.defaults.get("prompt") or DEFAULT_PROMPT})
        images = [image if isinstance(image, Image.Image) else str(image)]
        return Record(record_id, images, messages, [], meta={"image": str(image)})

    def dataset(self, records: Sequence[Record]) -> RecordDataset:
        """Records with their images loaded on access (and shrunk to the run's ``max_image_side``)."""
        return RecordDataset(list(records), None, self.defaults.get("max_image_side"))

    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch["generation_inputs"].items()
        }

    def generate(self, records: Sequence[Record], settings: GenerationSettings | None = None) -> list[str]:
        """Generate one answer per record (one batch)."""
        dataset = self.dataset(records)
        batch = self.collator([dataset[i] for i in range(len(dataset))])
        settings = settings or GenerationSettings()
        texts, _ = generate_batch(
            self.model, self._inputs(batch), self.tokenizer, self.stop_ids, **settings.kwargs()
        )
        return texts

    def stream(self, record: Record, settings: GenerationSettings | None = None) -> Iterator[str]:
        """Yield text pieces of the answer for one record as they are generated."""
        from transformers import TextIteratorStreamer

        settings = settings or GenerationSettings()
        batch = self.collator([self.dataset([record])[0]])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                generate_batch(
                    self.model,
                    self._inputs(batch),
                    self.tokenizer,
                    self.stop_ids,
                    streamer=streamer,
                    **settings.kwargs(),
                )
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if failure:
            raise failure[0]

    def predict(
        self,
        records: Sequence[Record],
        settings: GenerationSettings | None = None,
        batch_size: int = 4,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Generate for many records in batches; rows in the layout of the test / predict reports."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        loader = DataLoader(self.dataset(records), batch_size=batch_size, collate_fn=self.collator)
        settings = settings or GenerationSettings()
        rows: list[dict[str, Any]] = []
        start = time.perf_counter()
        with tqdm(total=len(records), unit="img", disable=not progress, file=sys.stderr) as bar:
            for batch in loader:
                t0 = time.perf_counter()
                texts, _ = generate_batch(
                    self.model, self._inputs(batch), self.tokenizer, self.stop_ids, **settings.kwargs()
                )
                latency_ms = 1000 * (time.perf_counter() - t0) / max(1, len(texts))
                for i, text in enumerate(texts):
                    answers = batch["answers"][i]
                    rows.append(
                        {
                            "id": batch["ids"][i],
                            "prompt": batch["prompts"][i],
                            "prediction": text,
                            "target": answers[0] if len(answers) == 1 else (answers or None),
                            "latency_ms": round(latency_ms, 2),
                            "meta": batch["meta"][i],
                        }
                    )
                bar.update(len(texts))
                bar.set_postfix(img_per_s=f"{len(rows) / (time.perf_counter() - start):.2f}")
        return rows


def records_from_folder(
    folder: str | Path, prompt: str, system: str | None = None
) -> tuple[list[Record], list[Any]]:
    """One prompt-only Record per image file of ``folder`` (sorted by name); problems listed, not raised."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    records, problems = [], []
    for line, path in enumerate(paths, start=1):
        record, row_problems = record_from_row(
            {"id": path.stem, "image": path.name, "prompt": prompt},
            source=str(folder),
            line=line,
            root=folder,
            default_prompt=prompt,
            default_system=system,
            require_answer=False,
        )
        problems.extend(row_problems)
        if record is not None:
            record.meta["image"] = str(path)
            records.append(record)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return records, problems


def write_predictions(rows: list[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (JSONL) and the CSV next to it with the evaluation report writer."""
    from vlm_lightning.evaluation.report import write_reports

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_out = out.with_suffix(".csv")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        written = write_reports(Path(tmp), rows, None)
        shutil.move(written["predictions"], out)
        shutil.move(written["predictions_csv"], csv_out)
    return out, csv_out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlm_lightning infer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    parser.add_argument("--no-stream", action="store_true", help="print the answer once it is complete")
    parser.add_argument("--out", type=Path, default=Path("predictions.jsonl"), help="batch mode output JSONL")
    parser.add_argument("--batch-size", type=int, default=4, help="batch mode batch size")
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
    for path, is_dir in ((args.image, False), (args.images_dir, True), (args.jsonl, False)):
        if path is not None and not (path.is_dir() if is_dir else path.is_file()):
            parser.error(f"no such {'folder' if is_dir else 'file'}: {path}")
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
        settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.min_p)
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
            f"[vlm_lightning] {len(problems)} bad file(s) skipped (listed in {listed}); "
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


if __name__ == "__main__":
    main()
