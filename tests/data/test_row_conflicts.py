"""Rows whose fields disagree are refused (nothing is dropped silently); unread keys and repeated ids are logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from vlm_lightning.data.records import read_jsonl


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    Image.new("RGB", (32, 32), "white").save(tmp_path / "a.png")
    return tmp_path


def read_rows(folder: Path, *rows: dict) -> tuple[list, list]:
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_jsonl(path)


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"image": "a.png", "images": ["a.png"], "answer": "x"}, "images", "together with 'image'"),
        (
            {
                "image": "a.png",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "question": "Q2",
                "answer": "A2",
            },
            "messages",
            "['question', 'answer']",
        ),
        ({"image": "a.png", "answer": "3.0", "target": {"total": 3.0}}, "target", "together with 'answer'"),
        ({"image": "a.png", "answer": "x", "answers": ["y", "z"]}, "answers", "not one of its references"),
    ],
)
def test_conflicting_fields_are_refused_with_file_line_and_field(
    folder: Path, row: dict, field: str, words: str
) -> None:
    records, problems = read_rows(folder, {"image": "a.png", "answer": "fine"}, row)
    assert len(records) == 1 and len(problems) == 1
    text = str(problems[0])
    assert f"rows.jsonl:2: field '{field}'" in text and words in text


def test_an_answer_listed_among_its_references_keeps_every_reference(folder: Path) -> None:
    records, problems = read_rows(folder, {"image": "a.png", "answer": "y", "answers": ["x", "y", "z"]})
    assert not problems
    assert records[0].answers == ["y", "x", "z"]  # the training target first, no reference lost


def test_unread_keys_and_repeated_ids_are_logged(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"id": "r1", "image": "a.png", "qestion": "What is the total?", "answer": "3.0"},
        {"id": "r1", "image": "a.png", "qestion": "Again?", "answer": "4.0"},
    ]
    with caplog.at_level(logging.WARNING, logger="vlm_lightning.data.records"):
        records, problems = read_rows(folder, *rows)
    assert len(records) == 2 and not problems
    assert (
        "'qestion' (2 rows: lines 1, 2; did you mean 'question'?)" in caplog.text
        and "Known keys:" in caplog.text
    )
    assert "1 id(s) used by more than one row (e.g. r1)" in caplog.text


def test_known_keys_log_nothing(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    row = {"id": "k", "image": "a.png", "question": "q", "answer": "a", "system": "s", "doc_type": "receipt"}
    with caplog.at_level(logging.WARNING, logger="vlm_lightning.data.records"):
        records, problems = read_rows(folder, row)
    assert len(records) == 1 and not problems and not caplog.text


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (
            {"question": "What colour?", "query": "How many boxes?", "answer": "red"},
            "query",
            "keep one question",
        ),
        (
            {"question": "What colour?", "prompt": "Describe it.", "answer": "red"},
            "prompt",
            "keep one question",
        ),
        ({"target": "", "id": "e"}, "target", "expected a non-empty JSON object"),
        ({"target": {}}, "target", "expected a non-empty JSON object"),
        ({"target": []}, "target", "expected a non-empty JSON object"),
        ({"target": "plain"}, "target", "give a text answer as 'answer'"),
        ({"target": 3}, "target", "give a text answer as 'answer'"),
    ],
)
def test_a_second_question_or_an_empty_or_text_target_is_a_bad_row(
    tmp_path: Path, row: dict, field: str, reason: str
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"image": "a.png", **row}) + "\n")
    records, problems = read_jsonl(path)
    assert records == [] and len(problems) == 1, problems
    assert f"field '{field}'" in str(problems[0]) and reason in str(problems[0]), problems


def test_the_same_question_under_two_keys_and_a_list_target_are_kept(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "rows.jsonl"
    rows = [
        {"image": "a.png", "question": "Total?", "query": "Total?", "answer": "3"},
        {"image": "a.png", "target": [{"name": "tea"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, problems = read_jsonl(path)
    assert not problems and len(records) == 2
    assert records[1].answers == ['[{"name": "tea"}]']
