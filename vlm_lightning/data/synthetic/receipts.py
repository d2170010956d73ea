"""Synthetic shop receipts rendered with PIL, with the JSON a model should extract from them.

Target schema (key order as written)::

    {"store_name": str, "date": str, "currency": "USD" | "EUR" | "SEK" | "GBP",
     "items": [{"name": str, "quantity": int, "price": float}], "total": float}

``date`` is the date exactly as printed on the receipt (one of :data:`DATE_FORMATS`), ``price`` is
the unit price and ``total`` is ``sum(quantity * price)`` rounded to cents. Texts are kept short so
that the compact JSON target (``records.compact_json``) is typically under 220 characters with the
default 1-4 items (fewer items are more likely); 4 items reach about 290 characters.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ._common import write_samples

KIND = "receipts"
ID_PREFIX = "receipt"

#: Store name -> catalogue of (item name, lowest price, highest price) in USD-like units.
STORES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "Corner Cafe": (("Latte", 2.5, 5.5), ("Mocha", 2.5, 5.0), ("Muffin", 1.8, 4.0), ("Tea", 1.2, 3.0)),
    "Fresh Mart": (("Apples", 1.0, 4.5), ("Bread", 1.5, 4.0), ("Milk", 0.9, 2.5), ("Eggs", 2.0, 5.0)),
    "Book Nook": (("Novel", 7.0, 19.0), ("Diary", 4.0, 12.0), ("Pen", 0.8, 3.0), ("Atlas", 12.0, 30.0)),
    "Tech Hub": (("Cable", 4.0, 15.0), ("Mouse", 9.0, 35.0), ("Charger", 12.0, 40.0), ("Battery", 2.0, 9.0)),
    "Green Grocer": (
        ("Carrots", 0.8, 2.5),
        ("Kale", 0.9, 2.8),
        ("Leeks", 1.5, 4.5),
        ("Onions", 0.7, 2.2),
    ),
    "Pizza Place": (("Pizza", 8.0, 18.0), ("Salad", 4.0, 9.0), ("Soda", 1.0, 3.0), ("Wings", 5.0, 11.0)),
    "City Bakery": (
        ("Scone", 1.2, 3.5),
        ("Bagel", 1.0, 3.0),
        ("Donut", 0.9, 2.5),
        ("Cake", 9.0, 25.0),
    ),
    "Fuel Stop": (("Snack", 1.0, 4.0), ("Coffee", 1.5, 3.5), ("Water", 0.8, 2.5), ("Gum", 0.5, 2.0)),
    "Pet Corner": (
        ("Kibble", 8.0, 30.0),
        ("Cat Toy", 2.0, 9.0),
        ("Leash", 6.0, 20.0),
        ("Treats", 2.0, 7.0),
    ),
    "Daily Deli": (("Panini", 4.0, 9.0), ("Soup", 3.0, 7.0), ("Wrap", 4.0, 8.5), ("Juice", 1.5, 4.5)),
}

#: Currency code -> (symbol, symbol goes after the amount, price scale relative to the catalogue).
CURRENCIES: dict[str, tuple[str, bool, float]] = {
    "USD": ("$", False, 1.0),
    "EUR": ("€", False, 1.0),
    "GBP": ("£", False, 0.8),
    "SEK": ("kr", True, 10.0),
}

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Declared date formats: name -> regular expression of the printed string.
DATE_FORMATS: dict[str, str] = {
    "YYYY-MM-DD": r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})",
    "DD/MM/YYYY": r"(?P<d>\d{2})/(?P<m>\d{2})/(?P<y>\d{4})",
    "Mon DD, YYYY": r"(?P<mon>" + "|".join(MONTHS) + r") (?P<d>\d{2}), (?P<y>\d{4})",
    "DD.MM.YYYY": r"(?P<d>\d{2})\.(?P<m>\d{2})\.(?P<y>\d{4})",
}

DEFAULT_SIZE = (288, 384)
_FIRST_DAY = dt.date(2019, 1, 1)
_LAST_DAY = dt.date(2025, 12, 31)


def format_date(day: dt.date, fmt: str) -> str:
    """Print ``day`` in one of the :data:`DATE_FORMATS` (English month names, whatever the locale)."""
    if fmt == "YYYY-MM-DD":
        return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"
    if fmt == "DD/MM/YYYY":
        return f"{day.day:02d}/{day.month:02d}/{day.year:04d}"
    if fmt == "Mon DD, YYYY":
        return f"{MONTHS[day.month - 1]} {day.day:02d}, {day.year:04d}"
    if fmt == "DD.MM.YYYY":
        return f"{day.day:02d}.{day.month:02d}.{day.year:04d}"
    raise ValueError(f"unknown date format {fmt!r}; known: {', '.join(DATE_FORMATS)}")


def parse_date(text: str) -> tuple[dt.date, str]:
    """Parse a date printed by :func:`format_date`; return it with its format name (ValueError if none)."""
    for fmt, pattern in DATE_FORMATS.items():
        match = re.fullmatch(pattern, text)
        if match:
            parts = match.groupdict()
            month = MONTHS.index(parts["mon"]) + 1 if "mon" in parts else int(parts["m"])
            return dt.date(int(parts["y"]), month, int(parts["d"])), fmt
    raise ValueError(f"date {text!r} is in none of the formats {', '.join(DATE_FORMATS)}")


def format_money(amount: float, currency: str) -> str:
    """The amount with its currency symbol as printed on a receipt: ``$3.50``, ``€3.50``, ``35.00 kr``."""
    symbol, after, _ = CURRENCIES[currency]
    return f"{amount:.2f} {symbol}" if after else f"{symbol}{amount:.2f}"


def _covers(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, chars: str) -> bool:
    """Whether ``font`` has real glyphs for ``chars`` (a missing glyph renders as the notdef box)."""
    missing = bytes(font.getmask("\uffff"))
    return all(bytes(font.getmask(c)) != missing for c in chars)


@lru_cache(maxsize=16)
def receipt_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The receipt font: Pillow's default font at ``size``, if it has the currency symbols.

    Pillow's bundled default font (Aileron) has no ``€`` / ``£`` glyphs, so the DejaVu Sans font that
    ships inside matplotlib (a project dependency) is used then; no font is ever downloaded.
    """
    default = ImageFont.load_default(size=size)
    symbols = "".join(symbol for symbol, _, _ in CURRENCIES.values())
    if _covers(default, symbols):
        return default
    try:
        import matplotlib  # optional: matplotlib (its DejaVu font)

        return ImageFont.truetype(
            os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size
        )
    except (ImportError, OSError):  # pragma: no cover - matplotlib is a dependency
        return default


def _random_date(rng: random.Random) -> dt.date:
    return _FIRST_DAY + dt.timedelta(days=rng.randrange((_LAST_DAY - _FIRST_DAY).days + 1))


def receipt_target(
    rng: random.Random,
    *,
    min_items: int = 1,
    max_items: int = 4,
    max_quantity: int = 3,
    stores: Sequence[str] | None = None,
    currencies: Sequence[str] | None = None,
    date_formats: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Draw the content of one receipt (the JSON target) without rendering it.

    The number of items is drawn from ``min_items..max_items`` with weights 1, 1/2, 1/3, ... (short
    receipts are the most common, which keeps the typical target short).
    """
    if not 1 <= min_items <= max_items:
        raise ValueError(f"need 1 <= min_items <= max_items, got {min_items}, {max_items}")
    store = rng.choice(sorted(stores or STORES))
    currency = rng.choice(list(currencies or CURRENCIES))
    fmt = rng.choice(list(date_formats or DATE_FORMATS))
    date = format_date(_random_date(rng), fmt)
    scale = CURRENCIES[currency][2]
    catalogue = STORES[store]
    counts = range(min_items, max_items + 1)
    n_items = rng.choices(counts, weights=[1 / (1 + k - min_items) for k in counts])[0]
    if n_items <= len(catalogue):
        names = rng.sample(catalogue, n_items)
    else:  # more lines than the catalogue has products: repeat some
        names = [rng.choice(catalogue) for _ in range(n_items)]
    items = []
    total_cents = 0
    for name, low, high in names:
        cents = max(1, round(rng.uniform(low, high) * scale * 100))
        if rng.random() < 0.4:  # round prices like 4.99 / 5.50 are common on real receipts
            cents = max(1, cents - cents % 100 + rng.choice((0, 50, 95, 99)))
        quantity = rng.randint(1, max_quantity)
        total_cents += quantity * cents
        items.append({"name": name, "quantity": quantity, "price": cents / 100})
    total = round(total_cents / 100, 2)
    assert round(sum(it["quantity"] * it["price"] for it in items), 2) == total, (items, total)
    return {"store_name": store, "date": date, "currency": currency, "items": items, "total": total}


#: Store name -> (header band colour, logo shape): each store's visual identity, as real receipts have a
#: branded header. The tiny replicas' random frozen vision towers pass colour far better than small print,
#: so the band (and the logo) is what lets a fine-tuned replica tell the stores apart.
BRANDS: dict[str, tuple[tuple[int, int, int], str]] = {
    "Corner Cafe": ((120, 72, 40), "circle"),
    "Fresh Mart": ((30, 150, 60), "square"),
    "Book Nook": ((30, 50, 130), "triangle"),
    "Tech Hub": ((40, 40, 40), "diamond"),
    "Green Grocer": ((130, 200, 40), "circle"),
    "Pizza Place": ((210, 40, 30), "triangle"),
    "City Bakery": ((230, 120, 170), "square"),
    "Fuel Stop": ((240, 140, 20), "diamond"),
    "Pet Corner": ((130, 60, 170), "circle"),
    "Daily Deli": ((20, 150, 150), "square"),
}
#: Currency code -> colour of the large currency-symbol badge printed under the header.
CURRENCY_BADGES: dict[str, tuple[int, int, int]] = {
    "USD": (40, 120, 60),
    "EUR": (40, 70, 170),
    "GBP": (150, 40, 110),
    "SEK": (225, 150, 20),
}


def _logo(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, ...]
) -> None:
    left, top, right, bottom = box
    mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(mid_x, top), (right, bottom), (left, bottom)], fill=fill)
    else:  # diamond
        draw.polygon([(mid_x, top), (right, mid_y), (mid_x, bottom), (left, mid_y)], fill=fill)


def render_receipt(
    target: dict[str, Any],
    rng: random.Random,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    font_size: int = 16,
    noise: bool = False,
    band: float = 0.25,
) -> Image.Image:
    """Draw a receipt image showing ``target``: a branded header (the store's colour band, logo and name,
    a quarter of the height by ``band``), the date and currency lines beside a large currency-symbol
    badge, the item table and the TOTAL line.

    The image grows taller than ``size`` if the items do not fit. With ``noise`` the paper gets a
    small rotation, pixel noise and a slight blur.
    """
    width, height = size
    body = receipt_font(font_size)
    head = receipt_font(round(font_size * 1.4))
    small = receipt_font(max(8, round(font_size * 0.8)))
    line = round(font_size * 1.45)
    margin = max(8, width // 18)
    items = target["items"]
    band_h = round(height * band)
    badge = round(band_h * 0.85)
    needed = band_h + 8 + badge + line * (len(items) + 3) + round(font_size * 2.2) + font_size + margin
    height = max(height, needed)

    red = rng.randint(246, 255)
    paper = (red, red - rng.randint(0, 6), red - rng.randint(4, 18))  # white to slightly warm paper
    ink = (rng.randint(10, 60),) * 3
    white = (255, 255, 255)
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    currency = target["currency"]
    right = width - margin
    qty_x = int(width * 0.62)

    colour, shape = BRANDS[target["store_name"]]
    draw.rectangle((0, 0, width - 1, band_h - 1), fill=colour)
    logo = round(band_h * 0.5)
    _logo(draw, shape, (margin, (band_h - logo) // 2, margin + logo, (band_h + logo) // 2), white)
    name_font = receipt_font(round(font_size * 1.5))
    draw.text(
        ((width + margin + logo) // 2, band_h // 2),
        target["store_name"],
        font=name_font,
        fill=white,
        anchor="mm",
    )

    top = band_h + 4
    draw.rectangle((width - badge - 4, top, width - 4, top + badge), fill=CURRENCY_BADGES[currency])
    symbol = CURRENCIES[currency][0]
    symbol_font = receipt_font(round(badge * (0.75 if len(symbol) == 1 else 0.55)))
    draw.text((width - 4 - badge // 2, top + badge // 2), symbol, font=symbol_font, fill=white, anchor="mm")

    y = band_h + margin // 2
    draw.text((margin, y), f"Date: {target['date']}", font=body, fill=ink)
    y += line
    draw.text((margin, y), f"Currency: {currency}", font=small, fill=ink)
    y = max(y + line, top + badge + 4)
    _rule(draw, margin, right, y + font_size // 2, ink)
    y += line
    draw.text((margin, y), "Item", font=small, fill=ink)
    draw.text((qty_x, y), "Qty", font=small, fill=ink, anchor="ma")
    draw.text((right, y), "Price", font=small, fill=ink, anchor="ra")
    y += line
    for item in items:
        draw.text((margin, y), item["name"], font=body, fill=ink)
        draw.text((qty_x, y), str(item["quantity"]), font=body, fill=ink, anchor="ma")
        draw.text((right, y), format_money(item["price"], currency), font=body, fill=ink, anchor="ra")
        y += line
    _rule(draw, margin, right, y + font_size // 2, ink)
    y += line
    draw.text((margin, y), "TOTAL", font=head, fill=ink)
    draw.text((right, y), format_money(target["total"], currency), font=head, fill=ink, anchor="ra")
    y += round(font_size * 2.2)
    draw.text((width // 2, y), "Thank you!", font=small, fill=ink, anchor="ma")

    if noise:
        image = _add_noise(image, rng)
    return image


def _rule(draw: ImageDraw.ImageDraw, left: int, right: int, y: int, ink: tuple[int, ...]) -> None:
    """A dashed separator line."""
    for x in range(left, right, 8):
        draw.line((x, y, min(x + 4, right), y), fill=ink, width=1)


def _add_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(150, 210) for _ in range(3))
    image = image.rotate(rng.uniform(-2.5, 2.5), resample=Image.Resampling.BICUBIC, fillcolor=background)
    pixels = np.asarray(image, dtype=np.float32)
    gen = np.random.default_rng(rng.getrandbits(64))
    pixels += gen.normal(0.0, rng.uniform(3.0, 9.0), size=pixels.shape[:2])[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7)))
    return image


def generate_receipt(
    rng: random.Random,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    font_size: int = 16,
    noise: bool = False,
    min_items: int = 1,
    max_items: int = 4,
    max_quantity: int = 3,
    stores: Sequence[str] | None = None,
    currencies: Sequence[str] | None = None,
    date_formats: Sequence[str] | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """One receipt in memory: its RGB image and its JSON target (see the module docstring)."""
    target = receipt_target(
        rng,
        min_items=min_items,
        max_items=max_items,
        max_quantity=max_quantity,
        stores=stores,
        currencies=currencies,
        date_formats=date_formats,
    )
    image = render_receipt(target, rng, size=size, font_size=font_size, noise=noise)
    return image, target


def write_receipts(
    out_dir: str | Path, n: int, seed: int = 0, *, split: str | dict[str, float] | None = None, **options: Any
) -> Path:
    """Write ``n`` receipts to ``out_dir/data.jsonl`` (+ ``images/``); return the JSONL path.

    ``options`` go to :func:`generate_receipt`. With ``split`` (e.g. ``"train=0.8,val=0.1,test=0.1"``)
    one file per split is written instead and the first one's path is returned; use
    :func:`vlm_lightning.data.synthetic.write_dataset` to get all of them.
    """
    paths = write_samples(
        out_dir,
        n,
        seed,
        kind=KIND,
        prefix=ID_PREFIX,
        make=lambda rng: _row(rng, options),
        split=split,
    )
    return next(iter(paths.values()))


def _row(rng: random.Random, options: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    image, target = generate_receipt(rng, **options)
    return image, {"target": target}
