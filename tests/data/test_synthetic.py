"""Synthetic generators: determinism by seed, receipt arithmetic and dates, splits, captchas, formulas, CLI."""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_lightning.data.records import compact_json, read_jsonl
from vlm_lightning.data.synthetic import (
    DATE_FORMATS,
    FormulaRenderError,
    format_date,
    generate_captcha,
    generate_formula,
    generate_receipt,
    parse_date,
    parse_split,
    receipt_target,
    render_formula,
    sample_rng,
    split_counts,
    write_captchas,
    write_dataset,
    write_formulas,
    write_receipts,
)
from vlm_lightning.data.synthetic import formulas as formulas_module
from vlm_lightning.data.synthetic.receipts import CURRENCIES, STORES, format_money, receipt_font

WRITERS = {"receipts": write_receipts, "captchas": write_captchas, "formulas": write_formulas}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pixels(folder: Path, rel: str) -> np.ndarray:
    with Image.open(folder / rel) as im:
        return np.asarray(im.convert("RGB"))


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options"),
    [("receipts", {}), ("receipts", {"noise": True}), ("captchas", {}), ("formulas", {})],
)
def test_same_seed_gives_identical_files_and_pixels(tmp_path: Path, kind: str, options: dict) -> None:
    first = WRITERS[kind](tmp_path / "a", 4, seed=7, **options)
    second = WRITERS[kind](tmp_path / "b", 4, seed=7, **options)
    assert first.name == "data.jsonl"
    assert first.read_bytes() == second.read_bytes()
    rows = _rows(first)
    assert len(rows) == 4
    for row in rows:
        assert np.array_equal(_pixels(first.parent, row["image"]), _pixels(second.parent, row["image"]))


@pytest.mark.parametrize("kind", ["receipts", "captchas", "formulas"])
def test_different_seed_differs(tmp_path: Path, kind: str) -> None:
    first = WRITERS[kind](tmp_path / "a", 4, seed=0)
    second = WRITERS[kind](tmp_path / "b", 4, seed=1)
    assert first.read_bytes() != second.read_bytes()
    rel = _rows(first)[0]["image"]
    a, b = _pixels(first.parent, rel), _pixels(second.parent, rel)
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_sample_depends_only_on_seed_and_index() -> None:
    one = generate_receipt(sample_rng(5, "receipts", 3))
    two = generate_receipt(sample_rng(5, "receipts", 3))
    assert one[1] == two[1] and np.array_equal(np.asarray(one[0]), np.asarray(two[0]))
    assert receipt_target(sample_rng(5, "receipts", 4)) != one[1]


# --- receipts ----------------------------------------------------------------------------------


def _targets(n: int, **options) -> list[dict]:
    return [receipt_target(sample_rng(0, "receipts", i), **options) for i in range(1, n + 1)]


def test_receipt_totals_add_up_and_prices_have_cents() -> None:
    for target in _targets(500):
        assert list(target) == ["store_name", "date", "currency", "items", "total"]
        assert 1 <= len(target["items"]) <= 4
        for item in target["items"]:
            assert isinstance(item["quantity"], int) and item["quantity"] >= 1
            assert isinstance(item["price"], float) and item["price"] > 0
            assert round(item["price"], 2) == item["price"]
        expected = round(sum(it["quantity"] * it["price"] for it in target["items"]), 2)
        assert target["total"] == expected
        assert round(target["total"], 2) == target["total"]


def test_receipt_dates_are_in_a_declared_format() -> None:
    seen = set()
    for target in _targets(300):
        day, fmt = parse_date(target["date"])
        assert format_date(day, fmt) == target["date"]
        assert re.fullmatch(DATE_FORMATS[fmt], target["date"])
        seen.add(fmt)
    assert seen == set(DATE_FORMATS) == {"YYYY-MM-DD", "DD/MM/YYYY", "Mon DD, YYYY", "DD.MM.YYYY"}
    only = _targets(20, date_formats=["DD.MM.YYYY"])
    assert all(re.fullmatch(r"\d{2}\.\d{2}\.\d{4}", t["date"]) for t in only)
    with pytest.raises(ValueError):
        parse_date("2024/13/01")


def test_receipt_variety_options_and_target_length() -> None:
    targets = _targets(400)
    assert len(STORES) >= 8
    assert {t["store_name"] for t in targets} == set(STORES)
    assert {t["currency"] for t in targets} == {"USD", "EUR", "SEK", "GBP"}
    lengths = [len(compact_json(t)) for t in targets]
    assert statistics.median(lengths) <= 220
    assert max(lengths) <= 320
    many = _targets(10, min_items=6, max_items=6)
    assert all(len(t["items"]) == 6 for t in many)
    with pytest.raises(ValueError):
        receipt_target(random.Random(0), min_items=3, max_items=2)


def test_receipt_image_and_currency_symbols() -> None:
    image, target = generate_receipt(random.Random(1), size=(256, 320), max_items=8, min_items=8)
    assert image.mode == "RGB" and image.width == 256 and image.height >= 320  # grows to fit the items
    gray = np.asarray(image.convert("L"))
    assert gray.min() < 100 and np.median(gray) > 200  # dark ink on white-ish paper
    assert format_money(3.5, "USD") == "$3.50"
    assert format_money(3.5, "EUR") == "€3.50"
    assert format_money(3.5, "GBP") == "£3.50"
    assert format_money(35, "SEK") == "35.00 kr"
    font = receipt_font(16)
    missing = bytes(font.getmask("\uffff"))
    assert all(bytes(font.getmask(symbol)) != missing for symbol, _, _ in CURRENCIES.values())


# --- splits ------------------------------------------------------------------------------------


def test_split_parsing_and_counts() -> None:
    assert parse_split("train=0.8,val=0.1,test=0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert parse_split(None) is None
    assert split_counts(400, parse_split("train=0.9,val=0.05,test=0.05")) == {
        "train": 360,
        "val": 20,
        "test": 20,
    }
    assert split_counts(10, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 8, "val": 1, "test": 1}
    assert sum(split_counts(7, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}).values()) == 7
    for bad in ["train=0.8,val=0.1", "train", "train=x", "a=0.5,a=0.5", "a b=1", "a=1.5,b=-0.5"]:
        with pytest.raises(ValueError):
            parse_split(bad)


def test_split_files_are_disjoint_with_requested_counts(tmp_path: Path) -> None:
    paths = write_dataset("receipts", tmp_path, 20, seed=3, split="train=0.8,val=0.1,test=0.1")
    assert list(paths) == ["train", "val", "test"]
    ids = {name: [row["id"] for row in _rows(path)] for name, path in paths.items()}
    assert {name: len(v) for name, v in ids.items()} == {"train": 16, "val": 2, "test": 2}
    all_ids = [i for v in ids.values() for i in v]
    assert len(set(all_ids)) == 20
    assert len(list((tmp_path / "images").glob("*.png"))) == 20
    # the project's loader accepts the files; sample i is the same with or without a split
    records, problems = read_jsonl(paths["test"])
    assert not problems and len(records) == 2
    assert json.loads(records[0].answers[0]) == records[0].target
    plain = _rows(write_receipts(tmp_path / "plain", 20, seed=3))
    assert [row["target"] for row in plain[-2:]] == [row["target"] for row in _rows(paths["test"])]


# --- captchas ----------------------------------------------------------------------------------


def test_captchas_rows_and_answers(tmp_path: Path) -> None:
    import secrets

    import captcha.image

    path = write_captchas(tmp_path, 8, seed=0)
    rows = _rows(path)
    assert all(re.fullmatch(r"\d{6}", row["answer"]) for row in rows)
    assert all(row["question"] == "What is the text in this captcha?" for row in rows)
    assert {row["id"] for row in rows} == {f"captcha-{i:05d}" for i in range(1, 9)}
    records, problems = read_jsonl(path)
    assert not problems and records[0].answers == [rows[0]["answer"]]
    assert captcha.image.secrets is secrets  # the seeded stand-in is removed again
    image, text = generate_captcha(random.Random(0), length=4, alphabet="ABC", size=(120, 50))
    assert re.fullmatch(r"[ABC]{4}", text) and image.size == (120, 50) and image.mode == "RGB"


# --- formulas ----------------------------------------------------------------------------------


def test_formulas_all_render(tmp_path: Path) -> None:
    path = write_formulas(tmp_path, 30, seed=0)
    rows = _rows(path)
    assert all(row["question"] == "Write the LaTeX for this formula." for row in rows)
    for row in rows:
        latex = row["answer"]
        assert 0 < len(latex) <= 60 and latex.count("{") == latex.count("}") and "$" not in latex
        with Image.open(tmp_path / row["image"]) as im:
            assert np.asarray(im.convert("L")).min() < 128  # something was drawn
        render_formula(latex)  # renders again, no exception
    assert len({row["answer"] for row in rows}) >= 25
    assert any("\\frac" in r["answer"] for r in rows) and any("^" in r["answer"] for r in rows)


def test_formula_render_failure_is_replaced_deterministically(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FormulaRenderError):
        render_formula(r"\frac{a}{")
    real = formulas_module.random_formula
    calls = {"n": 0}

    def flaky(rng: random.Random, **kwargs) -> str:
        calls["n"] += 1
        return r"\frac{a}{" if calls["n"] == 1 else real(rng, **kwargs)

    monkeypatch.setattr(formulas_module, "random_formula", flaky)
    _, first = generate_formula(random.Random(4))
    calls["n"] = 0
    _, second = generate_formula(random.Random(4))
    assert first == second and first != r"\frac{a}{"


# --- CLI ---------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlm_lightning.data.synthetic", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_writes_split_files(tmp_path: Path) -> None:
    out = tmp_path / "receipts"
    result = _cli(
        "receipts", "--out", str(out), "--n", "10", "--seed", "0", "--split", "train=0.8,val=0.1,test=0.1"
    )
    assert result.returncode == 0, result.stderr
    for name, count in {"train": 8, "val": 1, "test": 1}.items():
        assert len(_rows(out / f"{name}.jsonl")) == count
        assert str(out / f"{name}.jsonl") in result.stdout
    assert not (out / "data.jsonl").exists()
    assert len(list((out / "images").glob("*.png"))) == 10


def test_cli_captchas_and_formulas_and_errors(tmp_path: Path) -> None:
    result = _cli("captchas", "--out", str(tmp_path / "c"), "--n", "3", "--length", "5")
    assert result.returncode == 0, result.stderr
    assert all(re.fullmatch(r"\d{5}", row["answer"]) for row in _rows(tmp_path / "c" / "data.jsonl"))
    result = _cli("formulas", "--out", str(tmp_path / "f"), "--n", "3", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert len(_rows(tmp_path / "f" / "data.jsonl")) == 3 and "wrote 3 formulas rows" in result.stdout
    result = _cli("receipts", "--out", str(tmp_path / "r"), "--n", "3", "--split", "train=0.5")
    assert result.returncode == 2 and "sum to 1" in result.stderr
