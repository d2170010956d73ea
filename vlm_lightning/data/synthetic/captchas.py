"""Synthetic captchas drawn with the ``captcha`` package, answer = the characters shown.

``captcha.image.ImageCaptcha`` draws its randomness from :mod:`secrets` (not seedable); while one
image is drawn, the module's ``secrets`` name is pointed at a generator seeded from the sample's own
``random.Random`` (``patches/captcha_seed.py``, a patch of the captcha library).
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from vlm_lightning.patches.captcha_seed import seeded_captcha_module

from ._common import write_samples

KIND = "captchas"
ID_PREFIX = "captcha"
QUESTION = "What is the text in this captcha?"
DIGITS = string.digits
DEFAULT_SIZE = (160, 60)


@lru_cache(maxsize=8)
def _captcha_drawer(width: int, height: int, fonts: tuple[str, ...] | None) -> Any:
    from captcha.image import ImageCaptcha  # optional: captcha

    return ImageCaptcha(width=width, height=height, fonts=list(fonts) if fonts else None)


def captcha_text(rng: random.Random, *, length: int = 6, alphabet: str = DIGITS) -> str:
    """Draw the characters of one captcha."""
    if length < 1 or not alphabet:
        raise ValueError("captcha length must be >= 1 and the alphabet non-empty")
    return "".join(rng.choice(alphabet) for _ in range(length))


def render_captcha(
    text: str, rng: random.Random, *, size: tuple[int, int] = DEFAULT_SIZE, fonts: Sequence[str] | None = None
) -> Image.Image:
    """Draw ``text`` as a captcha image (RGB); the distortions come from ``rng`` only."""
    drawer = _captcha_drawer(size[0], size[1], tuple(fonts) if fonts else None)
    with seeded_captcha_module(rng):
        image = drawer.generate_image(text)
    return image.convert("RGB")


def generate_captcha(
    rng: random.Random,
    *,
    length: int = 6,
    alphabet: str = DIGITS,
    size: tuple[int, int] = DEFAULT_SIZE,
    fonts: Sequence[str] | None = None,
) -> tuple[Image.Image, str]:
    """One captcha in memory: its RGB image and the answer text (default: 6 digits)."""
    text = captcha_text(rng, length=length, alphabet=alphabet)
    return render_captcha(text, rng, size=size, fonts=fonts), text


def write_captchas(
    out_dir: str | Path, n: int, seed: int = 0, *, split: str | dict[str, float] | None = None, **options: Any
) -> Path:
    """Write ``n`` captchas to ``out_dir/data.jsonl`` (+ ``images/``); return the JSONL path.

    Rows are ``{"id", "image", "question", "answer"}``; ``options`` go to :func:`generate_captcha`.
    With ``split`` one file per split is written and the first one's path is returned.
    """
    paths = write_samples(
        out_dir, n, seed, kind=KIND, prefix=ID_PREFIX, make=lambda rng: _row(rng, options), split=split
    )
    return next(iter(paths.values()))


def _row(rng: random.Random, options: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    image, text = generate_captcha(rng, **options)
    return image, {"question": QUESTION, "answer": text}
