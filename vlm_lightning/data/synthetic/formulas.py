"""Synthetic LaTeX formulas rendered with matplotlib mathtext, answer = the LaTeX source.

Formulas come from a small random grammar (fractions, sums, square roots, greek letters, sub- and
superscripts) written in one canonical spelling: braces around every script / argument, single
spaces around binary operators. Every formula is rendered before it is used; one mathtext cannot
draw is replaced by the next one drawn from the same generator, so results stay deterministic.
Rendering uses matplotlib's Agg canvas directly (the same as ``matplotlib.use("Agg")`` without
changing the process-wide backend).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ._common import write_samples

KIND = "formulas"
ID_PREFIX = "formula"
QUESTION = "Write the LaTeX for this formula."

VARIABLES = ("a", "b", "c", "x", "y", "z", "n", "k", "m", "t")
GREEK = (r"\alpha", r"\beta", r"\gamma", r"\theta", r"\lambda", r"\mu", r"\pi", r"\sigma", r"\omega", r"\phi")
INDICES = ("i", "j", "k")
FONTSETS = ("cm", "dejavusans", "stix")
MAX_ATTEMPTS = 50


class FormulaRenderError(ValueError):
    """mathtext could not draw a formula."""


def _symbol(rng: random.Random) -> str:
    return rng.choice(GREEK) if rng.random() < 0.3 else rng.choice(VARIABLES)


def _number(rng: random.Random) -> str:
    return str(rng.randint(1, 9) if rng.random() < 0.8 else rng.randint(10, 99))


def _exponent(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return str(rng.randint(2, 4))
    if roll < 0.85:
        return rng.choice(("n", "k", "m"))
    return f"{rng.choice(('n', 'k'))} + 1"


def _atom(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.25:
        return _number(rng)
    if roll < 0.5:
        return f"{rng.randint(2, 9)}{rng.choice(VARIABLES)}"  # coefficient times a variable: 3x
    return _symbol(rng)


def _scripted(rng: random.Random) -> str:
    base = _symbol(rng)
    roll = rng.random()
    if roll < 0.45:
        return f"{base}^{{{_exponent(rng)}}}"
    if roll < 0.8:
        return f"{base}_{{{rng.choice(INDICES + ('0', '1', 'n'))}}}"
    return f"{base}_{{{rng.choice(INDICES)}}}^{{{rng.randint(2, 3)}}}"


def _sum(rng: random.Random) -> str:
    i = rng.choice(INDICES)
    lower = rng.choice(("0", "1"))
    upper = rng.choice(("n", "N", "m", "\\infty"))
    var = rng.choice(("a", "x", "y", "w"))
    body = rng.choice(
        (
            f"{var}_{{{i}}}",
            f"{i}^{{{rng.randint(2, 3)}}}",
            f"\\frac{{1}}{{{i}}}",
            f"{var}_{{{i}}}^{{2}}",
            f"\\frac{{1}}{{{i}^{{2}}}}",
            f"{rng.randint(2, 9)}{var}_{{{i}}}",
        )
    )
    return f"\\sum_{{{i}={lower}}}^{{{upper}}} {body}"


def _term(rng: random.Random, depth: int) -> str:
    roll = rng.random()
    if depth <= 0 or roll < 0.35:
        return _atom(rng)
    if roll < 0.6:
        return _scripted(rng)
    if roll < 0.78:
        return f"\\frac{{{_expr(rng, depth - 1, max_terms=2)}}}{{{_expr(rng, depth - 1, max_terms=2)}}}"
    if roll < 0.9:
        return f"\\sqrt{{{_expr(rng, depth - 1, max_terms=2)}}}"
    return _sum(rng)


def _expr(rng: random.Random, depth: int, max_terms: int = 3) -> str:
    parts = [_term(rng, depth)]
    for _ in range(rng.randint(1, max_terms) - 1):
        parts.append(rng.choice(("+", "-", "+", "\\cdot")))
        parts.append(_term(rng, depth))
    return " ".join(parts)


def random_formula(rng: random.Random, *, max_depth: int = 2, max_chars: int = 60) -> str:
    """Draw one formula's LaTeX (no ``$``), at most ``max_chars`` long; not yet checked by rendering."""
    if max_chars < 8:
        raise ValueError(f"max_chars must be >= 8, got {max_chars}")
    while True:
        formula = _expr(rng, max_depth)
        if rng.random() < 0.3:
            lhs = rng.choice(("y", "f(x)", "S", "z", "E"))
            formula = f"{lhs} = {formula}"
        if len(formula) <= max_chars and _has_structure(formula):
            return formula


def _has_structure(formula: str) -> bool:
    """Reject bare atoms such as ``y`` or ``3x``: a formula needs an operator, a script or a command."""
    return " " in formula or any(mark in formula for mark in ("\\", "^", "_"))


def render_formula(
    latex: str,
    *,
    fontsize: float = 18,
    dpi: int = 100,
    fontset: str = "dejavusans",
    min_size: tuple[int, int] = (64, 32),
) -> Image.Image:
    """Render ``$latex$`` with mathtext on white, cropped tight (padded to ``min_size``); grayscale.

    Raises :class:`FormulaRenderError` if mathtext cannot parse or draw it.
    """
    import matplotlib  # optional: matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional: matplotlib
    from matplotlib.figure import Figure  # optional: matplotlib

    with matplotlib.rc_context({"mathtext.fontset": fontset, "text.usetex": False}):
        fig = Figure(figsize=(6, 1.5), dpi=dpi, facecolor="white")
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, f"${latex}$", fontsize=fontsize, ha="center", va="center", color="black")
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08, facecolor="white")
        except Exception as exc:  # mathtext raises ValueError (and others) for formulas it cannot draw
            raise FormulaRenderError(f"mathtext cannot render {latex!r}: {exc}") from exc
    buf.seek(0)
    with Image.open(buf) as im:
        image = im.convert("L")
    if image.getextrema()[0] > 128:  # nothing dark was drawn
        raise FormulaRenderError(f"mathtext drew nothing for {latex!r}")
    if image.width < min_size[0] or image.height < min_size[1]:  # tiny images upset some processors
        canvas = Image.new("L", (max(image.width, min_size[0]), max(image.height, min_size[1])), 255)
        canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
        image = canvas
    return image


def generate_formula(
    rng: random.Random,
    *,
    max_depth: int = 2,
    max_chars: int = 60,
    fontsets: Sequence[str] = FONTSETS,
    fontsize_range: tuple[float, float] = (16, 22),
    dpi: int = 100,
) -> tuple[Image.Image, str]:
    """One formula in memory: its rendered image and its LaTeX (checked to render)."""
    last_error: Exception | None = None
    for _ in range(MAX_ATTEMPTS):
        latex = random_formula(rng, max_depth=max_depth, max_chars=max_chars)
        fontset = rng.choice(list(fontsets))
        fontsize = round(rng.uniform(*fontsize_range), 1)
        try:
            return render_formula(latex, fontsize=fontsize, dpi=dpi, fontset=fontset), latex
        except FormulaRenderError as exc:
            last_error = exc
    raise RuntimeError(f"no renderable formula in {MAX_ATTEMPTS} attempts") from last_error


def write_formulas(
    out_dir: str | Path, n: int, seed: int = 0, *, split: str | dict[str, float] | None = None, **options: Any
) -> Path:
    """Write ``n`` formulas to ``out_dir/data.jsonl`` (+ ``images/``); return the JSONL path.

    Rows are ``{"id", "image", "question", "answer"}``; ``options`` go to :func:`generate_formula`.
    With ``split`` one file per split is written and the first one's path is returned.
    """
    paths = write_samples(
        out_dir, n, seed, kind=KIND, prefix=ID_PREFIX, make=lambda rng: _row(rng, options), split=split
    )
    return next(iter(paths.values()))


def _row(rng: random.Random, options: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    image, latex = generate_formula(rng, **options)
    return image, {"question": QUESTION, "answer": latex}
