"""Row validation: every problem is reported with file, line and field; nothing is dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlm_lightning.data.records import compact_json, read_jsonl


def write(tmp_path: Path, rows: list) -> Path:
    Image.new("RGB", (20, 20), "white").save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_aliases_and_formats(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"id": "a", "image": "ok.png", "question": "Q?", "answer": "A"},
            {"image_path": "ok.png", "prompt": "P", "response": "R"},
            {"images": ["ok.png", "ok.png"], "question": "Q", "answers": ["x", "y"]},
            {"image": "ok.png", "target": {"total": 1.5, "items": [{"name": "tea"}]}},
            {
                "image": "ok.png",
                "system": "S",
                "messages": [
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "A2"},
                ],
            },
        ],
    )
    records, problems = read_jsonl(path, default_prompt="Extract.")
    assert problems == []
    assert [r.id for r in records] == ["a", "data-2", "data-3", "data-4", "data-5"]
    assert records[0].messages[-1] == {"role": "assistant", "content": "A"}
    assert records[0].images == [str(tmp_path / "ok.png")]  # relative to the JSONL folder
    assert records[2].answers == ["x", "y"] and len(records[2].images) == 2
    assert records[3].answers == [compact_json({"total": 1.5, "items": [{"name": "tea"}]})]
    assert records[3].messages[0] == {"role": "user", "content": "Extract."}
    assert [m["role"] for m in records[4].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert records[4].answers == ["A2"]


def test_every_bad_row_is_reported_with_file_line_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"image": "ok.png", "question": "Q", "answer": "A"},
            {"image": "missing.png", "question": "Q", "answer": "A"},
            {"image": "bad.png", "question": "Q", "answer": "A"},
            {"image": "ok.png", "question": "Q"},
            "{not json",
            {"image": "ok.png", "question": "Q", "answer": "   "},
            {"image": "ok.png", "question": "Q", "answer": {"not": "a string"}},
            {"image": "ok.png", "messages": []},
        ],
    )
    records, problems = read_jsonl(path)
    assert [r.id for r in records] == ["data-1"]
    found = {(p.line, p.field) for p in problems}
    assert found == {
        (2, "image"),
        (3, "image"),
        (4, "answer"),
        (5, "<row>"),
        (6, "answer"),
        (7, "answer"),
        (8, "messages"),
    }
    assert all(p.source == str(path) for p in problems)
    text = {p.line: str(p) for p in problems}
    assert "missing.png" in text[2] and "not found" in text[2]
    assert "unreadable image" in text[3]
    assert "JSON syntax error: Expecting property name enclosed in double quotes at column 2" in text[5]
    assert "line 2" not in text[5]  # the decoder's own position counts the row's newline as a line


def test_an_unclosed_row_is_reported_at_its_end(tmp_path: Path) -> None:
    path = write(tmp_path, ['{"image": "ok.png", "question": "x"'])
    _, problems = read_jsonl(path)
    assert [str(p).split(": ", 2)[-1] for p in problems] == [
        "JSON syntax error: Expecting ',' delimiter at the end of the row (unclosed?)"
    ]


def test_predict_rows_need_no_answer(tmp_path: Path) -> None:
    path = write(tmp_path, [{"image": "ok.png", "question": "Q"}])
    records, problems = read_jsonl(path, require_answer=False)
    assert problems == [] and records[0].messages[-1]["role"] == "user" and records[0].answers == []


def test_paths_escaping_the_root_are_refused_when_asked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"image": "../ok.png", "question": "Q", "answer": "A"},
            {"image": "/etc/passwd", "question": "Q", "answer": "A"},
        ],
    )
    _, problems = read_jsonl(path, restrict_to_root=True)
    assert [p.line for p in problems] == [1, 2] and all("escapes" in p.reason for p in problems)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_numbers_in_answer_lists_are_text_and_bad_items_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"image": "ok.png", "question": "How many?", "answers": [42, "42", 42.5]},
            {"image": "ok.png", "question": "Q", "answers": ["a", {"b": 1}]},
        ],
    )
    records, problems = read_jsonl(path)
    assert records[0].answers == ["42", "42.5"]  # 42 and "42" are one answer
    assert len(problems) == 1 and problems[0].line == 2
    assert "answers[1] is a dict" in problems[0].reason and "got list" not in problems[0].reason


def test_a_mistyped_key_is_named_with_its_lines_and_the_closest_known_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo such as 'qestion' falls back to the default prompt: the warning says where and what was meant."""
    path = write(
        tmp_path,
        [
            {"image": "ok.png", "question": "Q", "answer": "A"},
            {"image": "ok.png", "qestion": "Q", "answer": "A"},
            {"image": "ok.png", "qestion": "Q", "answer": "A", "zzz": 1},
        ],
    )
    with caplog.at_level("WARNING", logger="vlm_lightning.data.records"):
        records, problems = read_jsonl(path, default_prompt="Extract.")
    assert len(records) == 3 and problems == []
    assert "'qestion' (2 rows: lines 2, 3; did you mean 'question'?)" in caplog.text
    assert "'zzz' (1 row: line 3)" in caplog.text
