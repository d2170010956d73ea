"""Property tests: hostile data rows give a Record or RowProblems naming line + field, never a crash.

``record_from_row`` / ``read_jsonl`` are fed malformed rows, wrong types, empty conversations, hostile
strings (long, control characters, invalid UTF-8 bytes) and missing / corrupt / zero-byte images,
mixed with valid rows: every valid row must come back, every bad line must be named, nothing else may
happen. Examples are kept small (``max_examples`` 50) so the file runs in seconds. The draws are the same in
every run (CI must not fail by chance); ``HYPOTHESIS_EXPLORE=1`` draws new ones.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from vlm_lightning.data.image_files import load_image
from vlm_lightning.data.records import Record, RowProblem, read_jsonl, record_from_row

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=not os.environ.get("HYPOTHESIS_EXPLORE"),
)
SOURCE = "data.jsonl"
_COUNTER = itertools.count()


def _image_bytes(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((4, 4), "TOTAL 12.30", fill="black")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder with good and bad images (``missing.png`` does not exist)."""
    folder = tmp_path_factory.mktemp("props")
    png, jpg = _image_bytes("PNG"), _image_bytes("JPEG")
    (folder / "ok.png").write_bytes(png)
    (folder / "ok.jpg").write_bytes(jpg)
    (folder / "zero.png").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (folder / "text.png").write_bytes(b"this is not an image")
    (folder / "trunc.png").write_bytes(png[: len(png) // 2])
    big_jpg = _image_bytes("JPEG", size=(320, 240))
    (folder / "trunc.jpg").write_bytes(big_jpg[: int(len(big_jpg) * 0.8)])  # headers intact, scan data cut
    return folder


GOOD_IMAGES = ["ok.png", "ok.jpg"]
BAD_IMAGES = ["missing.png", "zero.png", "corrupt.png", "text.png", "trunc.png", "", "   "]

# --- strategies ---------------------------------------------------------------------------------

# text a user might really have: any Unicode (no lone surrogates), control characters, long runs
hostile_text = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x1F), min_size=1, max_size=10),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(100, 3000)),
    st.sampled_from(
        ["\u202eRTL override", "zero\u200bwidth", "tab\there", "nul\x00byte", "emoji \U0001f9fe", "\ufeffbom"]
    ),
).filter(lambda s: s.strip() != "")

keys = st.sampled_from(
    [
        "id",
        "image",
        "image_path",
        "images",
        "question",
        "prompt",
        "answer",
        "response",
        "answers",
        "target",
        "messages",
        "system",
        "role",
        "content",
        "doc_type",
        "extra",
    ]
)
# (strings longer than a file name can be are covered by test_known_gaps: an over-long image path crashes)
short_hostile_text = hostile_text.filter(lambda s: len(s.encode()) < 200)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    short_hostile_text,
    st.sampled_from(GOOD_IMAGES + BAD_IMAGES + ["user", "assistant", "system", "tool"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=15,
)
any_row = st.one_of(json_values, st.dictionaries(keys, json_values, max_size=8))


@st.composite
def valid_rows(draw: st.DrawFn, ident: str) -> dict[str, Any]:
    """A row every schema variant must accept."""
    image_key = draw(st.sampled_from(["image", "image_path", "images"]))
    image: Any = draw(st.sampled_from(GOOD_IMAGES))
    if image_key == "images":
        image = draw(st.lists(st.sampled_from(GOOD_IMAGES), min_size=1, max_size=3))
    row: dict[str, Any] = {"id": ident, image_key: image}
    kind = draw(st.sampled_from(["qa", "answers", "target", "messages"]))
    if kind == "qa":
        row[draw(st.sampled_from(["question", "prompt"]))] = draw(hostile_text)
        row[draw(st.sampled_from(["answer", "response"]))] = draw(
            st.one_of(hostile_text, st.integers(), st.floats(allow_nan=False, allow_infinity=False))
        )
    elif kind == "answers":
        row["answers"] = draw(st.lists(hostile_text, min_size=1, max_size=3))
    elif kind == "target":
        row["target"] = draw(
            st.dictionaries(
                st.text(max_size=8), scalars.filter(lambda v: v is not None), min_size=1, max_size=4
            )
        )
    else:
        turns = draw(st.integers(1, 3))
        msgs = []
        for _ in range(turns):
            msgs += [
                {"role": "user", "content": draw(hostile_text)},
                {"role": "assistant", "content": draw(hostile_text)},
            ]
        row["messages"] = msgs
    if draw(st.booleans()):
        row["system"] = draw(hostile_text)
    return row


@st.composite
def bad_lines(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """One bad line (raw bytes, no newline) and the field names acceptable in its problem report."""
    kind = draw(
        st.sampled_from(
            [
                "syntax",
                "utf8",
                "not_object",
                "empty_messages",
                "wrong_type",
                "no_answer",
                "bad_image",
                "no_image",
                "bad_role",
                "empty_answer",
                "binary",
            ]
        )
    )
    image = draw(st.sampled_from(GOOD_IMAGES))
    if kind == "syntax":
        text = draw(
            st.sampled_from(
                ['{"image": "ok.png", "question": ', "{not json", "[1, 2", '{"a": 1}}', "'single'"]
            )
        )
        return text.encode(), {"<row>"}
    if kind == "utf8":
        good = json.dumps({"image": image, "question": "q", "answer": "a"}).encode()
        cut = draw(st.integers(1, len(good) - 2))
        junk = draw(
            st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\xbc", b"\x80\x80"])
        )
        return good[:cut] + junk + good[cut:], {"<row>"}
    if kind == "not_object":
        value = draw(
            st.one_of(st.integers(), st.lists(st.integers(), max_size=3), hostile_text, st.just(None))
        )
        return json.dumps(value).encode(), {"<row>"}
    if kind == "empty_messages":
        return json.dumps(
            {"image": image, "messages": draw(st.sampled_from([[], {}, "", None, [{}]]))}
        ).encode(), {"messages", "messages[0].role", "answer"}
    if kind == "wrong_type":
        wrong: dict[str, list[Any]] = {  # numbers (and lists of them: several answers) are valid answers
            "answer": [{"a": 1}, True, [], {}],
            "question": [{"a": 1}, [1, 2], True, [], 3.5, ""],
            "system": [{"a": 1}, [1, 2], True, 3.5],
            "id": [{"a": 1}, [1, 2], True, 3.5],
            "images": [[], [1], [None], ["ok.png", 7], {"a": "ok.png"}],
        }
        field = draw(st.sampled_from(sorted(wrong)))
        row: dict[str, Any] = {"question": "q", "answer": "a"}
        row["images" if field == "images" else "image"] = image
        row[field] = draw(st.sampled_from(wrong[field]))
        return json.dumps(row).encode(), {field, "images[0]", "images[1]", "image"}
    if kind == "no_answer":
        return json.dumps({"image": image, "question": "q"}).encode(), {"answer"}
    if kind == "bad_image":
        bad = draw(st.sampled_from(BAD_IMAGES))
        return json.dumps({"image": bad, "question": "q", "answer": "a"}).encode(), {"image"}
    if kind == "no_image":
        return json.dumps({"question": "q", "answer": "a"}).encode(), {"image"}
    if kind == "bad_role":
        msgs = [
            {"role": draw(st.sampled_from(["tool", "", None, 3])), "content": "x"},
            {"role": "assistant", "content": "a"},
        ]
        return json.dumps({"image": image, "messages": msgs}).encode(), {"messages", "messages[0].role"}
    if kind == "empty_answer":
        return json.dumps(
            {"image": image, "question": "q", "answer": draw(st.sampled_from(["", "  ", "\t\n"]))}
        ).encode(), {"answer"}
    raw = draw(
        st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\n", b"")).filter(lambda b: b.strip())
    )
    try:
        row = json.loads(raw.decode("utf-8"))
        if isinstance(row, dict):  # random bytes that happen to be a JSON object: still has no image
            return raw, {"image", "answer", "id", "system", "messages"}
    except (UnicodeDecodeError, ValueError):
        pass
    return raw, {"<row>"}


def _check_result(record: Record | None, problems: list[RowProblem], line: int) -> None:
    assert (record is None) == bool(problems), (record, problems)
    for p in problems:
        assert p.source == SOURCE and p.line == line
        assert isinstance(p.field, str) and p.field and isinstance(p.reason, str) and p.reason
        assert f"{SOURCE}:{line}: field '{p.field}'" in str(p)
    if record is not None:
        assert record.messages and record.messages[-1]["role"] == "assistant"
        assert all(isinstance(m["content"], str) for m in record.messages)
        assert any(m["role"] == "user" for m in record.messages)
        assert record.answers and record.answers[0] == record.messages[-1]["content"]
        for image in record.images:  # an accepted image really loads
            load_image(image)


# --- properties -----------------------------------------------------------------------------------


@SETTINGS
@given(row=any_row, line=st.integers(1, 10**6))
@example(row={"image": "ok.png", "messages": []}, line=1)
@example(row={"image": ["ok.png", 3], "question": {"q": 1}, "answer": None, "id": True}, line=2)
@example(row={"image": "zero.png", "question": "q", "answer": "a"}, line=3)
def test_any_json_row_gives_a_record_or_named_problems(root: Path, row: Any, line: int) -> None:
    record, problems = record_from_row(
        row, source=SOURCE, line=line, root=root, default_prompt="Extract.", default_system=None
    )
    _check_result(record, problems, line)


@SETTINGS
@given(data=st.data())
def test_valid_rows_are_always_accepted(root: Path, data: st.DataObject) -> None:
    row = data.draw(valid_rows("r-1"))
    record, problems = record_from_row(
        row, source=SOURCE, line=1, root=root, default_prompt="Extract.", default_system=None
    )
    assert problems == [], problems
    assert record is not None and record.id == "r-1"
    _check_result(record, problems, 1)


@SETTINGS
@given(data=st.data(), plan=st.lists(st.sampled_from(["good", "bad", "blank"]), min_size=1, max_size=12))
def test_mixed_file_keeps_every_valid_row_and_names_every_bad_line(
    root: Path, data: st.DataObject, plan: list[str]
) -> None:
    lines: list[bytes] = []
    good_ids: list[str] = []
    bad: dict[int, set[str]] = {}
    for number, kind in enumerate(plan, start=1):
        if kind == "good":
            ident = f"row-{number}"
            lines.append(
                json.dumps(data.draw(valid_rows(ident)), ensure_ascii=data.draw(st.booleans())).encode()
            )
            good_ids.append(ident)
        elif kind == "bad":
            raw, fields = data.draw(bad_lines())
            lines.append(raw)
            bad[number] = fields
        else:
            lines.append(data.draw(st.sampled_from([b"", b"   ", b"\t", b"\r"])))
    ending = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    path = root / f"mixed-{next(_COUNTER)}.jsonl"  # image paths are relative to the file's folder
    path.write_bytes(ending.join(lines) + data.draw(st.sampled_from([b"", ending])))

    records, problems = read_jsonl(path, default_prompt="Extract.")

    assert [r.id for r in records] == good_ids  # no valid row lost, order kept
    by_line: dict[int, list[RowProblem]] = {}
    for p in problems:
        by_line.setdefault(p.line, []).append(p)
        assert p.source == str(path)
        assert f"{path}:{p.line}: field '{p.field}'" in str(p)
    if not good_ids and not bad:  # only blank lines
        assert [(p.line, p.field) for p in problems] == [(0, "<file>")]
        return
    assert set(by_line) == set(bad), (by_line, bad)  # every bad line named, no good line blamed
    for number, fields in bad.items():
        assert {p.field for p in by_line[number]} & fields, (number, by_line[number], fields)


@SETTINGS
@given(lines=st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")), min_size=1, max_size=8))
def test_arbitrary_bytes_never_raise(
    root: Path, tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    path = tmp_path_factory.mktemp("bytes") / SOURCE
    path.write_bytes(b"\n".join(lines))
    records, problems = read_jsonl(path)
    lines_with_problems = {p.line for p in problems}
    for number, raw in enumerate(lines, start=1):
        if not raw.decode("utf-8", "replace").strip(" \t\r\n"):  # blank in JSON terms (\x0b is not)
            assert number not in lines_with_problems
    assert len(records) + len(lines_with_problems - {0}) <= len(lines)


def test_very_long_strings_are_kept_whole(root: Path, tmp_path: Path) -> None:
    long_q, long_a = "Q" * 1_000_000, "é" * 200_000
    path = tmp_path / SOURCE
    path.write_text(json.dumps({"image": str(root / "ok.png"), "question": long_q, "answer": long_a}) + "\n")
    records, problems = read_jsonl(path)
    assert problems == [] and records[0].prompt_text == long_q and records[0].answers == [long_a]


# --- gaps the property tests found in records.py (fixed) --------------------

_KNOWN_GAPS = [
    pytest.param(
        '{"id": ' + "1" * 5000 + ', "image": "ok.png", "question": "q", "answer": "a"}',
        "<row>",
        id="huge-integer-ValueError",
    ),
    pytest.param("[" * 100_000 + "]" * 100_000, "<row>", id="deep-nesting-RecursionError"),
    pytest.param(
        '{"image": "ok.png", "question": "bad \\ud800 escape", "answer": "a"}',
        "question",
        id="lone-surrogate-accepted",
    ),
    pytest.param(
        '{"image": "trunc.jpg", "question": "q", "answer": "a"}', "image", id="truncated-jpeg-accepted"
    ),
    pytest.param(
        '{"image": "' + "x" * 300 + '.png", "question": "q", "answer": "a"}',
        "image",
        id="overlong-image-path-OSError",
    ),
]


@pytest.mark.parametrize(("line", "field"), _KNOWN_GAPS)
def test_known_gaps_are_reported_as_row_problems(root: Path, tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / SOURCE
    good = json.dumps({"id": "good", "image": str(root / "ok.png"), "question": "q", "answer": "a"})
    path.write_text(
        f"{good}\n{line.replace('ok.png', str(root / 'ok.png')).replace('trunc.jpg', str(root / 'trunc.jpg'))}\n"
    )
    records, problems = read_jsonl(path)
    assert [r.id for r in records] == ["good"]
    assert [(p.line, p.field) for p in problems] == [(2, field)]


def test_utf8_bom_does_not_lose_the_first_row(root: Path, tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps({"image": str(root / "ok.png"), "question": "q", "answer": "a"}).encode()
        + b"\n"
    )
    records, problems = read_jsonl(path)
    assert problems == [] and len(records) == 1


def test_control_character_line_is_reported_not_skipped_as_blank(root: Path) -> None:
    """Regression (found by the property test above): a line holding only \\x1c is not JSON whitespace."""
    path = root / "control.jsonl"
    path.write_bytes(b"\x1c\n\n")
    records, problems = read_jsonl(path, default_prompt="Extract.")
    assert records == [] and [(p.line, p.field) for p in problems] == [(1, "<row>")]
