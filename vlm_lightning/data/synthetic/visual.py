"""A visual question only the image answers: the colour of a big solid box on a white background.

Four colours (``red``, ``green``, ``blue``, ``yellow``), balanced: every block of four consecutive
samples holds each colour once, in a seeded order, so any split of a multiple of four samples has
each answer exactly a quarter of the time. The question (one text, or with ``vary_question`` one of
:data:`QUESTIONS`), the image size (from ``sizes``), the box's position and size and a small shade
jitter come from the sample's own random generator, independently of the answer: without the image
no answer beats chance (0.25). A tiny random-weight replica with LoRA on its language model learns
it in a few hundred CPU steps, which makes it the check that the image reaches the answer
(``tests/integration/test_image_reaches_answer.py``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ._common import write_samples

KIND = "boxes"
ID_PREFIX = "box"
QUESTION = "What colour is the box?"
#: Phrasings of the question, drawn independently of the answer (prompts of different lengths in a batch).
QUESTIONS = (
    QUESTION,
    "Which colour is the box in this picture?",
    "Name the colour of the large rectangle.",
    "Box colour?",
)
#: Answer -> base RGB colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
DEFAULT_SIZE = (64, 64)
#: Image sizes a sample is drawn at, one picked per sample (default: one size).
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (DEFAULT_SIZE,)
WHITE = (255, 255, 255)


def box_colour(seed: int, index: int) -> str:
    """The answer of 1-based sample ``index``: each block of four samples holds every colour once."""
    block, slot = divmod(index - 1, len(COLOURS))
    order = random.Random(f"vlm_lightning.synthetic/{KIND}/{seed}/block/{block}").sample(
        list(COLOURS), len(COLOURS)
    )
    return order[slot]


def render_box(
    colour: str,
    rng: random.Random,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    min_fill: float = 0.6,
    max_fill: float = 0.9,
    jitter: int = 20,
) -> Image.Image:
    """A white RGB image with one solid box of ``colour`` covering ``min_fill..max_fill`` of each side."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose from {', '.join(COLOURS)}")
    if not 0.0 < min_fill <= max_fill <= 1.0:
        raise ValueError(f"need 0 < min_fill <= max_fill <= 1, got {min_fill}, {max_fill}")
    width, height = size
    box_w = max(1, round(width * rng.uniform(min_fill, max_fill)))
    box_h = max(1, round(height * rng.uniform(min_fill, max_fill)))
    left = rng.randint(0, width - box_w)
    top = rng.randint(0, height - box_h)
    fill = tuple(min(255, max(0, c + rng.randint(-jitter, jitter))) for c in COLOURS[colour])
    image = Image.new("RGB", size, WHITE)
    ImageDraw.Draw(image).rectangle((left, top, left + box_w - 1, top + box_h - 1), fill=fill)
    return image


def generate_box(
    rng: random.Random,
    colour: str | None = None,
    *,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    vary_question: bool = False,
    **options: Any,
) -> tuple[Image.Image, dict[str, Any]]:
    """One sample in memory: its image and row fields ``{"question", "answer"}``.

    ``colour`` is the answer (drawn from ``rng`` when None); the image size is drawn from ``sizes``
    and, with ``vary_question``, the phrasing from :data:`QUESTIONS`, both independently of the
    answer. ``options`` go to :func:`render_box`.
    """
    colour = colour if colour is not None else rng.choice(list(COLOURS))
    size = tuple(rng.choice(list(sizes)))
    question = rng.choice(QUESTIONS) if vary_question else QUESTION
    image = render_box(colour, rng, size=size, **options)  # type: ignore[arg-type]
    return image, {"question": question, "answer": colour}


def write_boxes(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    split: str | Mapping[str, float] | None = None,
    **options: Any,
) -> dict[str, Path]:
    """Write ``n`` box samples to ``out_dir`` (PNGs under ``images/``); return the JSONL path per split.

    Rows are ``{"id", "image", "question", "answer"}``; sample ``i``'s colour is :func:`box_colour` of
    ``(seed, i)``, everything else comes from its own generator. ``options`` go to :func:`generate_box`
    (``sizes``, ``vary_question``) and :func:`render_box` (``min_fill``, ``max_fill``, ``jitter``).
    """
    index = itertools.count(1)  # write_samples builds samples 1..n in order, one call each

    def make(rng: random.Random) -> tuple[Image.Image, dict[str, Any]]:
        return generate_box(rng, box_colour(seed, next(index)), **options)

    return write_samples(out_dir, n, seed, kind=KIND, prefix=ID_PREFIX, make=make, split=split)
