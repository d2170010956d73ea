"""The LightningDataModule: load and validate records, split, augment (train only), batch."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlm_lightning.data.collator import ChatCollator
from vlm_lightning.data.image_files import load_image
from vlm_lightning.data.masking import MaskStrategy
from vlm_lightning.data.records import DataValidationError, Record, RowProblem, read_jsonl
from vlm_lightning.data.sampling import (
    FILLER,
    EpochShuffleSampler,
    EvenShardSampler,
    PackedBatchSampler,
    RowsView,
    StreamDataLoader,
    StreamPosition,
)
from vlm_lightning.errors import SettingError, UserError
from vlm_lightning.training.distributed import gather_lists
from vlm_lightning.training.sharding import forward_is_collective

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test", "predict"]


def _all_ranks(flag: bool) -> bool:
    """``flag`` on every rank of an initialised process group (the flag itself in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    flags: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(flags, flag)
    return all(flags)


def merge_length_shares(
    n: int, shares: list[tuple[list[int], list[int], list[str]]]
) -> tuple[list[int], list[str]]:
    """Assemble per-rank (indices, lengths, problems) shares into the full length list (in sample order)
    and all problems (rank order); every index must be covered exactly once."""
    lengths: list[int | None] = [None] * n
    problems: list[str] = []
    for indices, share_lengths, share_problems in shares:
        if len(indices) != len(share_lengths):
            raise ValueError(f"length share has {len(indices)} indices but {len(share_lengths)} lengths")
        for i, length in zip(indices, share_lengths):
            if lengths[i] is not None:
                raise ValueError(f"sample {i} measured by two ranks")
            lengths[i] = length
        problems.extend(share_problems)
    missing = [i for i, length in enumerate(lengths) if length is None]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) measured by no rank, first {missing[:5]}")
    return [int(length) for length in lengths if length is not None], problems


def length_to_fit(lengths: list[int], share: float) -> int:
    """The smallest token limit that keeps at least ``share`` of these samples whole (nearest rank)."""
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _too_many_cut(cut: list[tuple[str, int, int]], lengths: list[int], hparams: Any) -> str | None:
    """The problem to report when ``max_length`` cuts more answers than ``max_cut_fraction`` allows."""
    n, fraction = len(lengths), hparams["max_cut_fraction"]
    if not cut or len(cut) <= fraction * n:
        return None
    # cut samples were measured at max_length: the longest len(cut) lengths are theirs
    full = sorted(lengths)[: n - len(cut)] + [length for _, length, _ in cut]
    shown = ", ".join(f"{rid} ({length} tokens)" for rid, length, _ in cut[:5])
    most, every = length_to_fit(full, 0.95), max(full)
    fits = (
        f"--data.max_length {every} keeps every answer whole"
        if most == every
        else f"--data.max_length {most} keeps 95% whole, {every} keeps all"
    )
    return (
        f"{len(cut)} of {n} training samples ({len(cut) / n:.0%}) are longer than data.max_length "
        f"{hparams['max_length']} and would lose the end of their answer and its end-of-turn token, so the "
        f"model would never learn to finish (e.g. {shown}). {fits}; or allow this with --data.max_cut_fraction "
        f"{math.ceil(100 * len(cut) / n) / 100:.2f}"
    )


def _report_cut_answers(split: str, cut: list[tuple[str, int, int]]) -> None:
    """Warn which samples lose the tail of their answer to ``data.max_length``."""
    if not cut:
        return
    shown = ", ".join(f"{rid} ({length} -> {kept} tokens)" for rid, length, kept in cut[:10])
    more = f" and {len(cut) - 10} more" if len(cut) > 10 else ""
    log.warning(
        "data.%s: %d sample(s) longer than data.max_length lose the tail of their answer (left out of the loss): "
        "%s%s. Raise data.max_length to keep them whole.",
        split,
        len(cut),
        shown,
        more,
    )


FAST_PATH_PAD_MULTIPLE = 64


class ImageLoadError(UserError, RuntimeError):
    """An image could not be loaded while batching; names the file and row."""


class RecordDataset(Dataset):
    """Records with their images loaded (and, for training, augmented) on access."""

    def __init__(
        self,
        records: list[Record],
        augmenter: Any = None,
        max_image_side: int | None = None,
        contrast: float = 1.0,
        sharpness: float = 1.0,
        cache: Any = None,
        cache_settings: Any = None,
    ) -> None:
        self.records = records
        self.cache = cache
        self.cache_settings = cache_settings
        self.augmenter = augmenter
        self.max_image_side = max_image_side
        self.contrast = contrast
        self.sharpness = sharpness
        self.lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Record, list[Image.Image]]:
        if index < 0:  # an evaluation filler (``EvenShardSampler``): sample -1 - index, marked, never scored
            record, images = self[-1 - index]
            return dataclasses.replace(record, meta={**record.meta, FILLER: True}), images
        record = self.records[index]
        images = []
        for image in record.images:
            key = None
            if self.cache is not None and isinstance(image, (str, Path)):
                from vlm_lightning.data.cache import fingerprint

                key = fingerprint(str(image), self.cache_settings, record.meta.get("augment_key"))
                cached = self.cache.get_image(key)
                if cached is not None:
                    images.append(cached)
                    continue
            try:
                im = load_image(image)
            except Exception as exc:
                raise ImageLoadError(
                    f"{record.where}: sample '{record.id}': cannot load image {image}: {exc}"
                ) from exc
            if self.max_image_side or self.contrast != 1.0 or self.sharpness != 1.0:
                from vlm_lightning.data.enhance import enhance

                im = enhance(
                    im, max_side=self.max_image_side, contrast=self.contrast, sharpness=self.sharpness
                )
            if self.augmenter is not None and "augment_key" in record.meta:
                im = self.augmenter(im, key=record.meta["augment_key"])
            if key is not None:
                self.cache.put_image(key, im)
            images.append(im)
        return record, images


class DocumentDataModule(L.LightningDataModule):
    """Loads JSONL splits (or dataset specs), validates every row up front and batches them.

    Args:
        train, val, test, predict: a JSONL path (rows: image/images, question+answer, messages or target),
            or a dataset spec ``{path, name, split, adapter, columns, limit, prompt}`` for a Hugging Face
            dataset (hub name, or local parquet / arrow / save_to_disk / image folder) through a task
            adapter (``cord``, ``docvqa``, ``infovqa``, ``chartqa``, ``latex_ocr``, ``captcha``,
            ``receipts_json``, ``generic``).
        processor_name: the processor's hub id or folder; linked from ``model.name_or_path`` by the CLI.
        batch_size: training batch size per device; ``eval_batch_size`` for val/test/predict (default: same).
        max_length: token limit per sample; a sample that would lose image or prompt tokens is an error.
        packing: pack training samples (with their images) into rows with no padding between them, each
            sample attending only to itself (exact: tested per family); validation / test stay unpacked.
            Refused, with the reason, for a family that cannot keep samples apart (PaliGemma's prefix-LM mask).
        max_tokens_per_row: token budget of a packed row (``None``: each batch is one row); it must hold
            the longest sample.
        max_cut_fraction: largest share of the training samples whose answer tail (and with it the
            end-of-turn token) ``max_length`` may cut; more stops before training with the length that
            would fit. ``0`` refuses any cut.
        prompt: instruction used for rows that carry only a ``target`` / ``answer``.
        system: system prompt added to every conversation (a row's own ``system`` wins).
        mask: learn every assistant turn (``assistant``) or only the last one (``last``).
        val_fraction: when ``val`` is not given, hold out this fraction of ``train`` (deterministic by seed).
        val_limit: evaluate on at most this many validation samples (generation is the costly part).
        image_max_tokens / image_min_tokens: image-token budget, translated to the family's processor knobs.
        max_image_side: shrink larger images (longest side, pixels) before the processor sees them.
        enhance_contrast / enhance_sharpness: PIL enhancement factors applied to every split (1.0 = off).
        cache_dir: keep preprocessed (enhanced, and for augmented copies augmented) images and token
            lengths here, keyed by the source files and every setting that changes them; reused by later runs.
        clear_cache: empty ``cache_dir`` before use.
        augment: albumentations pipeline for training only (``"default"`` or a list of transforms).
        augment_copies / augment_p: augmented copies added per training sample, and per-copy probability.
        leakage: overlap of ids, images or (image, question) pairs between splits is an ``error`` (default),
            a ``warn``-ing, or not checked (``off``).
        restrict_image_paths: refuse image paths that leave the data file's folder (``..``, absolute): JSONL
            files and datasets whose image column holds paths (parquet, CSV, arrow, ``messages`` rows).
        check_lengths: tokenize every sample before training and report all that cannot fit ``max_length``
            without cutting image or prompt tokens (their lengths are kept for length-aware batching).
        on_bad_row: ``error`` stops with every problem listed; ``skip`` drops those rows, reports the count
            and writes the list next to the run.
        pad_to_multiple_of: pad batches to a multiple of this length (static shapes for compiled kernels);
            ``auto`` (the default): 64 when CUDA is available (where layers are compiled by default), else none.
        group_by_length: ``None`` (the default): on when CUDA is available. Draw each training step's batches
            (all ranks together) from samples of similar
            length: less padding, and under DDP no rank waits for one with longer samples. Uses the
            lengths of ``check_lengths``; the order stays random between groups and resumable.
        num_workers: dataloader workers (processor work happens in them).
    """

    def __init__(
        self,
        train: str | dict | None = None,
        val: str | dict | None = None,
        test: str | dict | None = None,
        predict: str | dict | None = None,
        processor_name: str | None = None,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        max_length: int = 2048,
        max_cut_fraction: float = 0.05,
        packing: bool = False,
        max_tokens_per_row: int | None = None,
        prompt: str = "Extract the information in this document as JSON.",
        system: str | None = None,
        mask: MaskStrategy = "assistant",
        val_fraction: float = 0.0,
        val_limit: int | None = None,
        image_max_tokens: int | None = None,
        image_min_tokens: int | None = None,
        max_image_side: int | None = None,
        enhance_contrast: float = 1.0,
        enhance_sharpness: float = 1.0,
        cache_dir: str | None = None,
        clear_cache: bool = False,
        augment: str | list[dict] | None = None,
        augment_copies: int = 0,
        augment_p: float = 0.6,
        on_bad_row: Literal["error", "skip"] = "error",
        check_lengths: bool = True,
        leakage: Literal["error", "warn", "off"] = "error",
        restrict_image_paths: bool = False,
        pad_to_multiple_of: int | Literal["auto"] | None = "auto",
        group_by_length: bool | None = None,
        num_workers: int = 0,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if max_tokens_per_row is not None and max_tokens_per_row < 1:
            raise SettingError(f"data.max_tokens_per_row must be >= 1, got {max_tokens_per_row}")
        if max_tokens_per_row is not None and not packing:
            raise SettingError(
                "data.max_tokens_per_row is set but data.packing is false: set --data.packing true"
            )
        if not 0.0 <= max_cut_fraction <= 1.0:
            raise SettingError(f"data.max_cut_fraction must be within [0, 1], got {max_cut_fraction}")
        self.save_hyperparameters()
        self.paths: dict[Split, str | None] = {"train": train, "val": val, "test": test, "predict": predict}
        self.processor_name = processor_name
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.datasets: dict[Split, RecordDataset] = {}
        self.skipped: list[RowProblem] = []
        self._processor: Any = None
        self._collator: ChatCollator | None = None
        self.train_position = StreamPosition()
        self._prepared: set[str | None] = set()
        self._lengths_checked: set[str | None] = set()

    # --- the fast path's defaults -----------------------------------------------------------
    @property
    def pad_to_multiple_of(self) -> int | None:
        """``data.pad_to_multiple_of`` with ``auto`` resolved (64 on CUDA, where layers compile by default)."""
        value = self.hparams.pad_to_multiple_of
        if value == "auto":
            return FAST_PATH_PAD_MULTIPLE if torch.cuda.is_available() else None
        return value

    @property
    def group_by_length(self) -> bool:
        """``data.group_by_length`` with ``None`` resolved (on when CUDA is available and lengths are known)."""
        value = self.hparams.group_by_length
        if value is None:
            return torch.cuda.is_available() and self.hparams.check_lengths
        return bool(value)

    # --- processor and collator -------------------------------------------------------------
    @property
    def processor(self) -> Any:
        """The family's processor, with the configured image-token budget applied."""
        if self._processor is None:
            from vlm_lightning.models.loading import load_processor

            self._processor = load_processor(
                self._require_processor_name(),
                image_max_tokens=self.hparams.image_max_tokens,
                image_min_tokens=self.hparams.image_min_tokens,
                trust_remote_code=self.hparams.trust_remote_code,
            )
        return self._processor

    def _require_processor_name(self) -> str:
        if not self.processor_name:
            raise ValueError("data.processor_name is not set (the CLI links it from model.name_or_path)")
        return self.processor_name

    @property
    def collator(self) -> ChatCollator:
        """The batch collator for this model family."""
        if self._collator is None:
            from vlm_lightning.models.loading import family_of, make_collator

            self._collator = make_collator(
                self.processor,
                family_of(self._require_processor_name(), trust_remote_code=self.hparams.trust_remote_code),
                max_length=self.hparams.max_length,
                mask=self.hparams.mask,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
        return self._collator

    # --- loading ----------------------------------------------------------------------------
    def _read(self, split: Split) -> list[Record]:
        path = self.paths[split]
        if path is None:
            return []
        if isinstance(path, str) and path.endswith(".jsonl"):
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"data file not found: {path} (data.{split}; a relative path is read from the working "
                    f"directory {Path.cwd()})"
                )
            records, problems = read_jsonl(
                path,
                default_prompt=self.hparams.prompt,
                default_system=self.hparams.system,
                require_answer=split != "predict",
                restrict_to_root=self.hparams.restrict_image_paths,
            )
        else:
            from vlm_lightning.data.sources import load_spec

            records, problems = load_spec(
                path,
                default_prompt=self.hparams.prompt,
                default_system=self.hparams.system,
                require_answer=split != "predict",
                restrict_to_root=self.hparams.restrict_image_paths,
            )
        if problems:
            if not records:  # skipping would leave nothing to train / evaluate on
                hint = f"\nNo usable row is left in data.{split} ({path}): fix the rows above."
                raise DataValidationError(problems, hint=hint)
            if self.hparams.on_bad_row == "error":
                hint = "\nFix these rows, or set data.on_bad_row=skip to go on without them."
                raise DataValidationError(problems, hint=hint)
            self.skipped.extend(problems)
            log.warning("skipping %d bad row(s) of %s (list written to the run folder)", len(problems), path)
        return records

    def setup(self, stage: str | None = None) -> None:
        """Read and validate the splits the stage needs (``prepare``), then check every sample's length."""
        needed = self.prepare(stage)
        if self.hparams.check_lengths and stage not in self._lengths_checked:
            self._check_lengths([s for s in needed if s in self.datasets and s != "predict"])
            self._lengths_checked.add(stage)

    def prepare(self, stage: str | None = None) -> list[Split]:
        """Read and validate the splits ``stage`` needs (all problems reported together); returns them.

        Needs neither the processor nor the model: the CLI calls it before the model loads, so data
        errors come first. Done once per stage (``setup`` reuses it).
        """
        needed: list[Split] = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
        }.get(stage or "fit", ["train", "val", "test", "predict"])
        if stage in self._prepared:
            return needed
        if stage in (None, "fit"):
            self.check_packing()
        if stage == "fit" and not self.paths["train"]:
            raise SettingError("fit needs data.train (a JSONL path or a dataset spec): set --data.train")
        if stage in ("test", "validate", "predict") and not self.paths[needed[0]]:
            raise SettingError(
                f"{stage} needs data.{needed[0]}: set --data.{needed[0]} (a JSONL path or a dataset spec)"
            )
        loaded = {split: self._read(split) for split in needed}
        if stage == "fit" and self.hparams.leakage != "off" and self.paths["test"]:
            loaded_test = self._read("test")
        else:
            loaded_test = []
        if "train" in loaded and not loaded.get("val") and self.hparams.val_fraction > 0:
            loaded["train"], loaded["val"] = self._hold_out(loaded["train"], self.hparams.val_fraction)
        if self.hparams.leakage != "off" and sum(bool(v) for v in loaded.values()) + bool(loaded_test) > 1:
            from vlm_lightning.data.leakage import check_leakage

            splits = {k: v for k, v in loaded.items() if v}
            if loaded_test:
                splits["test"] = loaded_test
            check_leakage(splits).raise_if_any(allow=self.hparams.leakage == "warn")
        if loaded.get("val") and self.hparams.val_limit:
            loaded["val"] = loaded["val"][: self.hparams.val_limit]
        for split, records in loaded.items():
            augmenter = None
            if split == "train":
                records, augmenter = self._augment(records)
            self.datasets[split] = RecordDataset(
                records,
                augmenter,
                self.hparams.max_image_side,
                self.hparams.enhance_contrast,
                self.hparams.enhance_sharpness,
                cache=self.cache,
                cache_settings=self._image_settings(),
            )
        self._prepared.add(stage)
        return needed

    @property
    def cache(self) -> Any:
        """The preprocessing cache (None without ``cache_dir``)."""
        if not self.hparams.cache_dir:
            return None
        if getattr(self, "_cache", None) is None:
            from vlm_lightning.data.cache import PreprocessCache

            self._cache = PreprocessCache(self.hparams.cache_dir)
            # before the trainer is attached (the CLI's early ``prepare``), the launcher's rank decides
            first = rank_zero_only.rank == 0 if self.trainer is None else self.trainer.is_global_zero
            if self.hparams.clear_cache and first:
                self._cache.clear()
        return self._cache

    def _image_settings(self) -> dict[str, Any]:
        keys = ("max_image_side", "enhance_contrast", "enhance_sharpness", "augment", "augment_p", "seed")
        return {k: self.hparams[k] for k in keys}

    def _lengths_key(self, dataset: RecordDataset) -> str:
        from vlm_lightning.data.cache import fingerprint

        samples = [
            (r.id, r.messages, [str(i) for i in r.images], r.meta.get("augment_key")) for r in dataset.records
        ]
        sources = sorted({str(i) for r in dataset.records for i in r.images if isinstance(i, (str, Path))})
        settings = {
            k: self.hparams[k] for k in ("max_length", "image_max_tokens", "image_min_tokens", "mask")
        }
        return fingerprint(
            samples,
            [fingerprint(s) for s in sources],
            settings,
            self._image_settings(),
            fingerprint(str(Path(self._require_processor_name()) / "config.json")),
            self._require_processor_name(),
        )

    def _check_lengths(self, splits: list[Split]) -> None:
        """Tokenize every sample once; report every sample that cannot fit, all together."""
        problems: list[str] = []
        for split in splits:
            dataset = self.datasets[split]
            key = self._lengths_key(dataset) if self.cache is not None else None
            cached = self.cache.get_json(key) if key else None
            if _all_ranks(cached is not None):  # ranks must agree: a rank that measures waits for the others
                dataset.lengths = cached
                continue
            self.collator.cut_samples.clear()
            lengths, split_problems = self._measure_lengths(dataset)
            problems.extend(split_problems)
            cut = gather_lists(self.collator.cut_samples)
            if split == "train" and (too_many := _too_many_cut(cut, lengths, self.hparams)):
                problems.append(too_many)
            else:
                _report_cut_answers(split, cut)
            dataset.lengths = lengths
            if key and not problems:
                self.cache.put_json(key, lengths)
        train = self.datasets.get("train")
        if "train" in splits and train is not None and train.lengths:
            self._check_row_budget(train.lengths, "train")
        if problems:
            raise DataValidationError(
                [RowProblem("token lengths", 0, "data.max_length", p) for p in problems],
                hint="\nNo sample was cut silently: raise data.max_length or lower data.image_max_tokens.",
            )

    def _measure_lengths(self, dataset: RecordDataset) -> tuple[list[int], list[str]]:
        """Token lengths (and too-long problems) of every sample; under an initialised process group each
        rank measures every world_size-th sample and the shares are gathered, so all ranks hold the same
        full list and startup work is divided by the number of ranks."""
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        indices = list(range(rank, len(dataset), world))
        lengths: list[int] = []
        problems: list[str] = []
        chunk = 16
        for start in range(0, len(indices), chunk):
            items = [dataset[i] for i in indices[start : start + chunk]]
            lengths.extend(self.collator.lengths(items, problems))
        if world == 1:
            return lengths, problems
        shares: list[Any] = [None] * world
        torch.distributed.all_gather_object(shares, (indices, lengths, problems))
        return merge_length_shares(len(dataset), shares)

    def _hold_out(self, records: list[Record], fraction: float) -> tuple[list[Record], list[Record]]:
        order = list(range(len(records)))
        random.Random(self.hparams.seed).shuffle(order)
        n_val = max(1, round(len(records) * fraction))
        val_idx = set(order[:n_val])
        return [r for i, r in enumerate(records) if i not in val_idx], [records[i] for i in sorted(val_idx)]

    def _augment(self, records: list[Record]) -> tuple[list[Record], Any]:
        if not self.hparams.augment:
            return records, None
        from vlm_lightning.data.augment import build_augmentation, expand_with_copies

        augmenter = build_augmentation(self.hparams.augment, seed=self.hparams.seed)
        if self.hparams.augment_copies < 1:
            raise SettingError("data.augment is set but data.augment_copies is 0: set how many copies to add")
        return expand_with_copies(records, self.hparams.augment_copies, self.hparams.augment_p), augmenter

    # --- dataloaders ------------------------------------------------------------------------
    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        dataset = self.datasets[split]
        sampler = None
        trainer = self.trainer
        loader_cls: type[DataLoader] = DataLoader
        extra: dict[str, Any] = {}
        batch_size: int | None = self.batch_size if split == "train" else self.eval_batch_size
        if shuffle and self.hparams.packing:
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            if dataset.lengths is None:
                raise SettingError("data.packing needs the sample lengths: keep data.check_lengths on")
            sampler = PackedBatchSampler(
                dataset.lengths, self.row_budget, rows=self.batch_size, seed=self.hparams.seed,
                num_replicas=world, rank=rank,
            )  # fmt: skip
            dataset, batch_size = RowsView(dataset), None  # an item is a whole batch of rows
            loader_cls, extra = StreamDataLoader, {"position": self.train_position}
        elif shuffle:
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            lengths = None
            if self.group_by_length:
                if dataset.lengths is None:
                    raise SettingError(
                        "data.group_by_length needs the sample lengths: keep data.check_lengths on"
                    )
                lengths = dataset.lengths
            sampler = EpochShuffleSampler(
                len(dataset),
                seed=self.hparams.seed,
                num_replicas=world,
                rank=rank,
                lengths=lengths,
                batch_size=self.batch_size,
            )
            loader_cls, extra = StreamDataLoader, {"position": self.train_position}
        elif trainer is not None and trainer.world_size > 1 and forward_is_collective(trainer.strategy):
            # sharded weights: every rank runs the same number of batches (fillers pad the shorter shares)
            sampler = EvenShardSampler(len(dataset), trainer.world_size, trainer.global_rank)
        elif trainer is not None and trainer.world_size > 1:
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            # every sample exactly once across ranks: no padding duplicates in metrics or predictions
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return loader_cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self._packed_collate if split == "train" and self.hparams.packing else self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # worker seeds come from this generator, not the global RNG: creating an iterator (Lightning
            # does so a different number of times in resumed runs) must not shift the dropout RNG stream
            generator=torch.Generator().manual_seed(self.hparams.seed),
            **extra,
        )

    @property
    def row_budget(self) -> int:
        """Tokens per packed training row: ``data.max_tokens_per_row``, by default ``data.max_length``."""
        return self.hparams.max_tokens_per_row or self.hparams.max_length

    def _packed_collate(self, rows: list[list[Any]]) -> dict[str, Any]:
        """One training batch of packed rows (``data.packing``): ``PackedBatchSampler``'s rows of samples."""
        return self.collator.pack([item for row in rows for item in row], rows=[len(row) for row in rows])

    def check_packing(self) -> None:
        """Refuse ``data.packing`` for a family that cannot keep samples apart, before any work starts."""
        if not self.hparams.packing:
            return
        from vlm_lightning.models.loading import family_of

        facts = family_of(self._require_processor_name(), trust_remote_code=self.hparams.trust_remote_code)
        reason = facts.packing_refusal or (
            None if facts.prompt_style == "chat" else "its prompt + suffix collator does not pack"
        )
        if reason:
            raise SettingError(
                f"data.packing cannot be used with {facts.name}: {reason}. Set --data.packing false "
                "(batches are then padded; data.group_by_length keeps the padding small)"
            )

    def _check_row_budget(self, lengths: list[int], split: str) -> None:
        budget = self.row_budget
        if self.hparams.packing and lengths and max(lengths) > budget:
            records = self.datasets[split].records
            longest = max(range(len(lengths)), key=lengths.__getitem__)
            raise SettingError(
                f"data.max_tokens_per_row {budget} is smaller than sample '{records[longest].id}' "
                f"({records[longest].where}, {lengths[longest]} tokens): set --data.max_tokens_per_row "
                f"{max(lengths)} or more (unset: data.max_length)"
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.datasets.get("val") and not self.paths["val"]:
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: where training is in the sample stream."""
        return {"train_position": self.train_position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored by ``fit --ckpt_path`` before the train dataloader is built."""
        if "train_position" in state_dict:
            self.train_position.load_state_dict(state_dict["train_position"])

    def write_skipped(self, run_dir: str | Path) -> Path | None:
        """Write the list of skipped rows next to the run (``on_bad_row: skip``)."""
        if not self.skipped:
            return None
        path = Path(run_dir) / "skipped_rows.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(str(p) for p in self.skipped) + "\n")
        return path
