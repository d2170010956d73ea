"""The ``captcha`` package's randomness drawn from a seeded generator while one captcha image is drawn.

``captcha.image.ImageCaptcha`` draws its randomness from :mod:`secrets` (not seedable); while one
image is drawn, the module's ``secrets`` (and ``random``, for older releases) name is pointed at a
generator seeded from the sample's own ``random.Random``, under a lock, and restored afterwards.
Applied per drawn captcha (``data/synthetic/captchas.py: render_captcha``, a with-block).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
def seeded_captcha_module(rng: random.Random) -> Iterator[None]:
    """Inside the block, ``captcha.image`` draws from a generator seeded by ``rng`` (one draw of ``rng``)."""
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


__all__ = ["seeded_captcha_module"]
