"""Sum-state torchmetrics base class and the plain-text metrics (ANLS, relaxed accuracy, EM, LaTeX)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from rapidfuzz.distance import Levenshtein
from sacrebleu.metrics import BLEU
from torch import Tensor
from torchmetrics import Metric

from vlm_lightning.metrics import functional as F

__all__ = ["ANLS", "DocumentMetric", "ExactMatch", "LatexMetrics", "RelaxedAccuracy", "ratio"]

BLEU_ORDER = 4


def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, or 0 when the denominator is 0."""
    if denominator > 0:
        return numerator / denominator
    return torch.zeros_like(numerator)


def _reference_list(references: Sequence[str] | str) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("every sample needs at least one reference answer")
    return refs


class DocumentMetric(Metric):
    """Base class: per-sample additive statistics summed in float64 ``sum`` states.

    Subclasses name their statistics in ``stat_names`` (or ``_stat_names()``), return them for one
    sample from ``sample_stats`` and turn sums into named values in ``finalize``. Because every state
    is a scalar sum, DDP synchronisation is exact and uneven shards are fine. ``n_samples`` is added.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better: bool | None = True
    stat_names: tuple[str, ...] = ()
    #: references must be JSON documents (checked against the data before training starts)
    needs_json_references: bool = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._all_stat_names():
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _stat_names(self) -> tuple[str, ...]:
        return self.stat_names

    def _all_stat_names(self) -> tuple[str, ...]:
        return (*self._stat_names(), "n_samples")

    def sample_stats(self, prediction: str, references: list[str]) -> dict[str, float]:
        """Additive statistics of one sample (without ``n_samples``)."""
        raise NotImplementedError

    def finalize(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named metric values from summed statistics (``n_samples`` included)."""
        raise NotImplementedError

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Add a batch: ``references[i]`` lists the acceptable answers of ``predictions[i]``."""
        if isinstance(predictions, str) or len(predictions) != len(references):
            raise ValueError(f"need one list of references per prediction, got {len(references)} lists")
        totals = dict.fromkeys(self._all_stat_names(), 0.0)
        for prediction, refs in zip(predictions, references):
            for name, value in self.sample_stats(prediction, _reference_list(refs)).items():
                totals[name] += value
        totals["n_samples"] = float(len(predictions))
        for name, value in totals.items():
            setattr(self, name, getattr(self, name) + value)

    def compute(self) -> dict[str, Tensor]:
        """Named values over everything seen (all ranks after sync)."""
        return self.finalize({name: getattr(self, name) for name in self._all_stat_names()})

    def score_sample(self, prediction: str, references: Sequence[str]) -> dict[str, float]:
        """The metric values of one sample alone, without touching the states."""
        stats = dict.fromkeys(self._all_stat_names(), 0.0)
        stats.update(self.sample_stats(prediction, _reference_list(references)))
        stats["n_samples"] = 1.0
        tensors = {name: torch.tensor(value, dtype=torch.float64) for name, value in stats.items()}
        return {name: float(value) for name, value in self.finalize(tensors).items()}


class _MeanOverSamples(DocumentMetric):
    """Mean over samples of one per-sample score named ``key``."""

    key = ""

    def _stat_names(self) -> tuple[str, ...]:
        return (f"{self.key}_sum",)

    def sample_score(self, prediction: str, references: list[str]) -> float:
        raise NotImplementedError

    def sample_stats(self, prediction: str, references: list[str]) -> dict[str, float]:
        return {f"{self.key}_sum": float(self.sample_score(prediction, references))}

    def finalize(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.key: ratio(stats[f"{self.key}_sum"], stats["n_samples"])}


class ANLS(_MeanOverSamples):
    """DocVQA ANLS averaged over questions -> ``{"anls"}``."""

    key = "anls"

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def sample_score(self, prediction: str, references: list[str]) -> float:
        return F.anls(prediction, references, self.threshold)


class RelaxedAccuracy(_MeanOverSamples):
    """ChartQA relaxed accuracy, best over the references -> ``{"relaxed_accuracy"}``."""

    key = "relaxed_accuracy"

    def __init__(self, tolerance: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tolerance = tolerance

    def sample_score(self, prediction: str, references: list[str]) -> float:
        return float(any(F.relaxed_correctness(prediction, ref, self.tolerance) for ref in references))


class ExactMatch(_MeanOverSamples):
    """Whitespace-normalised, case-sensitive match with any reference -> ``{"exact_match"}``."""

    key = "exact_match"

    def sample_score(self, prediction: str, references: list[str]) -> float:
        return float(any(F.exact_match(prediction, ref) for ref in references))


class CharacterErrorRate(DocumentMetric):
    """Character error rate for captchas / OCR -> ``{"cer"}`` (lower is better).

    Corpus CER as jiwer / torchmetrics ``CharErrorRate`` define it: the summed Levenshtein edits between
    each prediction and its reference over the summed reference lengths (not a mean of per-sample
    rates). With several references the one with the fewest edits is used. Per sample: edits / length.
    Text is compared as given (no case or whitespace folding: a captcha's case matters).
    """

    higher_is_better = False
    stat_names = ("edits", "reference_chars")

    def sample_stats(self, prediction: str, references: list[str]) -> dict[str, float]:
        best = min(references, key=lambda ref: (Levenshtein.distance(prediction, ref), len(ref)))
        return {"edits": float(Levenshtein.distance(prediction, best)), "reference_chars": float(len(best))}

    def finalize(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"cer": ratio(stats["edits"], stats["reference_chars"])}


@lru_cache(maxsize=1)
def _bleu() -> BLEU:
    return BLEU(tokenize="13a", effective_order=True)


class LatexMetrics(DocumentMetric):
    """LaTeX / formula transcription -> ``{"bleu", "normalized_edit_distance", "exact_match"}``.

    ``bleu`` is sacrebleu ``corpus_bleu`` (tokenize ``13a``, exp smoothing, 0-100 scale) rebuilt from
    summed sufficient statistics (n-gram matches and totals, hypothesis and closest reference
    lengths), so it equals the corpus score over all ranks; per sample (``score_sample``) the value is
    sacrebleu's sentence BLEU (effective order), named ``sentence_bleu``. ``normalized_edit_distance`` (lower is better) is the
    minimum over references, averaged over samples; ``exact_match`` is whitespace-normalised.
    """

    higher_is_better = None

    def _stat_names(self) -> tuple[str, ...]:
        counts = [f"bleu_correct_{n}" for n in range(1, BLEU_ORDER + 1)]
        totals = [f"bleu_total_{n}" for n in range(1, BLEU_ORDER + 1)]
        return (*counts, *totals, "bleu_sys_len", "bleu_ref_len", "ned_sum", "exact_sum")

    def sample_stats(self, prediction: str, references: list[str]) -> dict[str, float]:
        score = _bleu().sentence_score(prediction, references)
        stats = {"bleu_sys_len": float(score.sys_len), "bleu_ref_len": float(score.ref_len)}
        for n in range(1, BLEU_ORDER + 1):
            stats[f"bleu_correct_{n}"] = float(score.counts[n - 1])
            stats[f"bleu_total_{n}"] = float(score.totals[n - 1])
        stats["ned_sum"] = min(F.normalized_edit_distance(prediction, ref) for ref in references)
        stats["exact_sum"] = float(any(F.exact_match(prediction, ref) for ref in references))
        return stats

    def finalize(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        correct = [int(stats[f"bleu_correct_{n}"]) for n in range(1, BLEU_ORDER + 1)]
        total = [int(stats[f"bleu_total_{n}"]) for n in range(1, BLEU_ORDER + 1)]
        bleu = BLEU.compute_bleu(
            correct, total, int(stats["bleu_sys_len"]), int(stats["bleu_ref_len"]), smooth_method="exp"
        )
        n = stats["n_samples"]
        return {
            "bleu": torch.tensor(bleu.score, dtype=torch.float64, device=n.device),
            "normalized_edit_distance": ratio(stats["ned_sum"], n),
            "exact_match": ratio(stats["exact_sum"], n),
        }

    def score_sample(self, prediction: str, references: Sequence[str]) -> dict[str, float]:
        """As the base class, with ``sentence_bleu`` (sacrebleu, effective order) instead of ``bleu``.

        Corpus BLEU is not a mean of sentence scores: the per-sample value has its own name so that it is
        never shown next to (or averaged into something that looks like) the corpus ``bleu``.
        """
        scores = super().score_sample(prediction, references)
        scores.pop("bleu", None)
        scores["sentence_bleu"] = float(_bleu().sentence_score(prediction, _reference_list(references)).score)
        return scores
