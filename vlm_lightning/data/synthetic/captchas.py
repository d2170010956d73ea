"""Synthetic captchas drawn with the ``captcha`` package, answer = the characters shown.

``captcha.image.ImageCaptcha`` draws its randomness from :mod:`secrets` (not seedable); while one
image is drawn, the module's ``secrets`` (and ``random``, for older releases) name is pointed at a
generator seeded from the sample's own ``random.Random``, under a lock, and restored afterwards.
"""

from __future__ import annotations

import random
import string
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from ._common import write_samples

KIND = "captchas"
ID_PREFIX = "captcha"
QUESTION = "What is the text in this captcha?"
DIGITS = string.digits
DEFAULT_SIZE = (160, 60)

_PATCH_LOCK = threading.Lock()


class _SeededSecrets:
    """The parts of the :mod:`secrets` / :mod:`random` module APIs that ``captcha`` uses, seeded."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq: Sequence[Any]) -> Any:
        return self._rng.choice(seq)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b)

    def random(self) -> float:
        return self._rng.random()

    def uniform(self, a: float, b: float) -> float:
        return self._rng.uniform(a, b)


@contextmanager
def _seeded_captcha_module(rng: random.Random) -> Iterator[None]:
    import captcha.image as captcha_image  # optional: captcha

    shim = _SeededSecrets(random.Random(rng.getrandbits(64)))
    with _PATCH_LOCK:
        saved = {
            name: getattr(captcha_image, name)
            for name in ("secrets", "random")
            if hasattr(captcha_image, name)
        }
        for name in saved:
            setattr(captcha_image, name, shim)
        try:
            yield
        finally:
            for name, module in saved.items():
                setattr(captcha_image, name, module)


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
    with _seeded_captcha_module(rng):
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
