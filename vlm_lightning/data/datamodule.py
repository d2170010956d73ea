"""The LightningDataModule: load and validate records, split, augment (train only), batch."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from vlm_lightning.data.cache import PreprocessCache
from vlm_lightning.data.collator import ChatCollator
from vlm_lightning.data.dataset import ImageLoadError, RecordDataset
from vlm_lightning.data.leakage import check_leakage, evaluated_on_training_file
from vlm_lightning.data.length_check import check_lengths, length_to_fit, lengths_key, merge_length_shares
from vlm_lightning.data.loaders import build_loader, check_validation_interval, plan_loader, workers_for
from vlm_lightning.data.masking import MaskStrategy
from vlm_lightning.data.records import Record, RowProblem
from vlm_lightning.data.sampling import EPOCH_BATCHES, StreamPosition, layout_change
from vlm_lightning.data.settings import check_data_settings
from vlm_lightning.data.splits import hold_out, read_split
from vlm_lightning.errors import SettingError
from vlm_lightning.models.loading import family_of, load_processor, make_collator

__all__ = ["DocumentDataModule", "ImageLoadError", "RecordDataset", "length_to_fit", "merge_length_shares"]

Split = Literal["train", "val", "test", "predict"]
FAST_PATH_PAD_MULTIPLE = 64


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
            Refused, with the reason, for a family that cannot keep samples apart (PaliGemma, Gemma 3 / 4,
            Qwen3.5).
        max_tokens_per_row: token budget of a packed row (``None``: ``max_length``); with packing a batch is
            ``batch_size`` rows, each filled with as many samples as fit; it must hold the longest sample.
        max_cut_fraction: largest share of the training samples whose answer tail (and with it the
            end-of-turn token) ``max_length`` may cut; more stops before training with the length that
            would fit. ``0`` refuses any cut.
        prompt / system: instruction for rows with only a ``target`` / ``answer`` / system prompt of every
            conversation (a row's own ``system`` wins).
        mask: learn every assistant turn (``assistant``) or only the last one (``last``).
        val_fraction: when ``val`` is not given, hold out this fraction of ``train`` (deterministic by seed).
        val_limit: evaluate on at most this many validation samples (generation is the costly part).
        image_max_tokens / image_min_tokens: image-token budget, translated to the family's processor knobs.
        max_image_side: shrink larger images (longest side, pixels) before the processor sees them.
        enhance_contrast / enhance_sharpness: PIL enhancement factors applied to every split (1.0 = off).
        cache_dir / clear_cache: keep preprocessed images and token lengths here (keyed by the source files
            and every setting that changes them; reused by later runs) / empty it first.
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
            (all ranks together) from samples of similar length: less padding, and under DDP no rank waits
            for one with longer samples; uses ``check_lengths``' lengths; random between groups, resumable.
        num_workers: dataloader workers (image decoding and processor work happen in them). ``None`` (the
            default): on CUDA up to 8 per process (the CPUs this process may use / processes per node), else 0.
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
        num_workers: int | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_data_settings(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            packing=packing,
            max_tokens_per_row=max_tokens_per_row,
            check_lengths=check_lengths,
            group_by_length=group_by_length,
            max_cut_fraction=max_cut_fraction,
        )
        self.save_hyperparameters()
        self.paths: dict[Split, str | None] = {"train": train, "val": val, "test": test, "predict": predict}
        self.processor_name = processor_name
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
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
            self._processor = load_processor(
                self._require_processor_name(),
                image_max_tokens=self.hparams.image_max_tokens,
                image_min_tokens=self.hparams.image_min_tokens,
                trust_remote_code=self.hparams.trust_remote_code,
            )
        return self._processor

    def _require_processor_name(self) -> str:
        if self.processor_name:
            return self.processor_name
        raise ValueError("data.processor_name is not set (the CLI links it from model.name_or_path)")

    @property
    def collator(self) -> ChatCollator:
        """The batch collator for this model family."""
        if self._collator is None:
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
        return read_split(self.paths[split], split, self.hparams, self.skipped)

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
        if stage in ("test", "validate") and (same := evaluated_on_training_file(self.paths, needed[0])):
            rank_zero_warn(same)
        loaded = {split: self._read(split) for split in needed}
        if stage == "fit" and self.hparams.leakage != "off" and self.paths["test"]:
            loaded_test = self._read("test")
        else:
            loaded_test = []
        if "train" in loaded and not loaded.get("val") and self.hparams.val_fraction > 0:
            loaded["train"], loaded["val"] = hold_out(
                loaded["train"], self.hparams.val_fraction, self.hparams.seed
            )
        if self.hparams.leakage != "off" and sum(bool(v) for v in loaded.values()) + bool(loaded_test) > 1:
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
    def cache(self) -> PreprocessCache | None:
        """The preprocessing cache (None without ``cache_dir``)."""
        if not self.hparams.cache_dir:
            return None
        if getattr(self, "_cache", None) is None:
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
        return lengths_key(dataset, self.hparams, self._image_settings(), self._require_processor_name())

    def _check_lengths(self, splits: list[Split]) -> None:
        """Tokenize every sample once; report every sample that cannot fit, all together."""
        check_lengths(
            self.datasets,
            splits,
            lambda: self.collator,
            self.hparams,
            self.cache,
            self._lengths_key,
            self.row_budget,
        )

    def _augment(self, records: list[Record]) -> tuple[list[Record], Any]:
        if not self.hparams.augment:
            return records, None
        from vlm_lightning.data.augment import (  # optional: albumentations/cv2
            build_augmentation,
            expand_with_copies,
        )

        augmenter = build_augmentation(self.hparams.augment, seed=self.hparams.seed)
        if self.hparams.augment_copies < 1:
            raise SettingError("data.augment is set but data.augment_copies is 0: set how many copies to add")
        return expand_with_copies(records, self.hparams.augment_copies, self.hparams.augment_p), augmenter

    # --- dataloaders ------------------------------------------------------------------------
    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        plan = plan_loader(
            self.datasets[split],
            shuffle=shuffle,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            rows=self.batch_size,
            trainer=self.trainer,
            packing=self.hparams.packing,
            group_by_length=self.group_by_length,
            row_budget=self.row_budget,
            seed=self.hparams.seed,
        )
        collate = self._packed_collate if split == "train" and self.hparams.packing else self.collator
        workers = workers_for(self.num_workers, self.trainer)
        return build_loader(plan, collate, workers, self.hparams.seed, self.train_position)

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
        facts = family_of(self._require_processor_name(), trust_remote_code=self.hparams.trust_remote_code)
        reason = facts.packing_refusal or (
            None if facts.prompt_style == "chat" else "its prompt + suffix collator does not pack"
        )
        if reason:
            raise SettingError(
                f"data.packing cannot be used with {facts.name}: {reason}. Set --data.packing false "
                "(batches are then padded; data.group_by_length keeps the padding small)"
            )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        if self.trainer is not None:  # an interval beyond the epoch: refused with its numbers
            check_validation_interval(self.trainer, len(loader))
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if not self.datasets.get("val") and not self.paths["val"]:
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

    def train_layout(self) -> dict[str, Any]:
        """The settings that decide which samples make each training batch (saved with the position)."""
        train, trainer = self.datasets.get("train"), self.trainer
        return {
            "data.batch_size": self.batch_size,
            "data.packing": bool(self.hparams.packing),
            "data.max_tokens_per_row": self.row_budget if self.hparams.packing else None,
            "data.seed": self.hparams.seed,
            "training samples": len(train) if train is not None else None,
            "processes": trainer.world_size if trainer is not None else None,  # None: not known yet
            EPOCH_BATCHES: trainer.num_training_batches if trainer is not None else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: where training is in the sample stream, and the batch layout it is in."""
        return {"train_position": self.train_position.state_dict(), "train_layout": self.train_layout()}

    def refuse_another_layout(self, state_dict: dict[str, Any]) -> None:
        """Refuse a mid-epoch position saved in another batch layout (unknown settings are not compared)."""
        if "train_position" in state_dict:
            position = state_dict["train_position"]
            change = layout_change(state_dict.get("train_layout"), self.train_layout(), position)
            if change:
                raise SettingError(change)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored by ``fit --ckpt_path``; evaluation restores no position (batches of any size)."""
        if self.trainer is not None and self.trainer.state.fn != "fit":
            return
        self.refuse_another_layout(state_dict)
        if "train_position" in state_dict:
            self.train_position.load_state_dict(state_dict["train_position"])
