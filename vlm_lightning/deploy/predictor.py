"""``Predictor``: a loaded model + processor that generates from images and prompts like training does.

Prompts go through the same path as training and evaluation: a ``Record`` is built and the family's
collator makes the left-padded ``generation_inputs`` (chat template, image-token budget, end-of-turn
stop tokens), so a prompt is tokenized exactly as during validation. ``Predictor.load`` takes a base /
merged model, an exported adapter or a training checkpoint; defaults for the prompt, system prompt and
image budget come from the training run when known (the checkpoint, or the ``vlm_lightning_export.json``
that ``vlm_lightning.deploy.export`` writes).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import TextIteratorStreamer

from vlm_lightning.data.dataset import RecordDataset
from vlm_lightning.data.records import Record
from vlm_lightning.deploy.export import EXPORT_INFO, ExportError, load_checkpoint, rebuild_model
from vlm_lightning.generation import (
    DEFAULT_DECODING_COMPILER,
    DecodingCompiler,
    GenerationCache,
    StaticCacheChoice,
    end_of_turn_ids,
    generate_batch,
)
from vlm_lightning.models.build import build_model
from vlm_lightning.models.families import FamilyFacts
from vlm_lightning.models.loading import (
    Dtype,
    family_of,
    make_collator,
)

DEFAULT_PROMPT = "Extract the information in this document as JSON."
#: a static cache's compilation (about 6 s more than the dynamic cache's first batch, LFM2-VL-1.6B on an H200)
#: is repaid after about 5 batches (docs/benchmarks.md, "`test` through the CLI"): fewer keep the dynamic cache
STATIC_CACHE_MIN_BATCHES = 6


@dataclass
class GenerationSettings:
    """Decoding settings; ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    #: batch mode (``predict``): ``auto`` = a static cache on CUDA from ``STATIC_CACHE_MIN_BATCHES`` batches on
    cache: GenerationCache = "auto"
    #: how a static cache's decoding step compiles (``generation.decoding_compile_config``)
    compiler: DecodingCompiler = DEFAULT_DECODING_COMPILER

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate_batch``."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "decoding_compiler": self.compiler}
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
            if dtype == "auto" and defaults.get("dtype"):  # the export's weights: the same outputs as --ckpt
                dtype = defaults["dtype"]
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
        loader = DataLoader(self.dataset(records), batch_size=batch_size, collate_fn=self.collator)
        settings = settings or GenerationSettings()
        enough = settings.cache == "static" or len(loader) >= STATIC_CACHE_MIN_BATCHES
        choice = StaticCacheChoice()
        rows: list[dict[str, Any]] = []
        start = time.perf_counter()
        with tqdm(total=len(records), unit="img", disable=not progress, file=sys.stderr) as bar:
            for batch in loader:
                t0 = time.perf_counter()
                texts, _ = generate_batch(
                    self.model,
                    self._inputs(batch),
                    self.tokenizer,
                    self.stop_ids,
                    static_cache=enough and choice(self.model, settings.cache, len(batch["ids"])),
                    **settings.kwargs(),
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


__all__ = ["DEFAULT_PROMPT", "GenerationSettings", "Predictor"]
