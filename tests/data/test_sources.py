"""Dataset adapters on small local fixtures with the real hub datasets' column names and types."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from datasets import Image as HFImage
from PIL import Image

from vlm_lightning.data.records import compact_json
from vlm_lightning.data.sources import (
    ADAPTERS,
    DatasetSpec,
    HubUnreachableError,
    load_hf_records,
    load_spec,
)


@pytest.fixture(autouse=True)
def _local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep load_dataset's arrow cache inside the test's tmp dir."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def img(shade: int = 200, size: tuple[int, int] = (24, 16)) -> Image.Image:
    return Image.new("RGB", size, (shade, shade, shade))


def load(path: Path | str, adapter: str, **kwargs):
    return load_hf_records(
        str(path), adapter=adapter, default_prompt="JSON please", default_system=None, **kwargs
    )


# --- CORD (naver-clova-ix/cord-v2): image, ground_truth (JSON string with gt_parse) -------------
CORD_FEATURES = Features({"image": HFImage(), "ground_truth": Value("string")})


def cord_gt(total: str) -> str:
    parse = {"menu": [{"nm": "Latte", "cnt": "1", "price": total}], "total": {"total_price": total}}
    return json.dumps({"gt_parse": parse, "meta": {"version": "2.0.0", "split": "train", "image_id": 0}})


@pytest.fixture
def cord_dir(tmp_path: Path) -> Path:
    train = Dataset.from_dict(
        {
            "image": [img(), None, img(120), img(90), {"bytes": b"not a png", "path": None}],
            "ground_truth": [
                cord_gt("4.50"),
                cord_gt("1.00"),
                "{not json",
                json.dumps({"meta": {}}),
                cord_gt("2"),
            ],
        },
        features=CORD_FEATURES,
    )
    test = Dataset.from_dict({"image": [img(50)], "ground_truth": [cord_gt("9.99")]}, features=CORD_FEATURES)
    path = tmp_path / "cord-v2"
    DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


def test_cord_saved_dataset_dict(cord_dir: Path) -> None:
    records, problems = load(cord_dir, "cord")
    assert len(records) == 1
    rec = records[0]
    assert rec.target["total"] == {"total_price": "4.50"}
    assert rec.answers == [compact_json(rec.target)]
    assert rec.messages[-1] == {"role": "assistant", "content": rec.answers[0]}
    assert rec.messages[0]["content"] == ADAPTERS["cord"].default_prompt
    assert isinstance(rec.images[0], Image.Image)
    assert rec.meta == {"source": f"{cord_dir}:train", "row": 0, "doc_type": "receipt"}
    assert rec.id == "cord-v2-train-0"
    found = {(p.line, p.field) for p in problems}
    assert found == {(1, "image"), (2, "ground_truth"), (3, "ground_truth"), (4, "image")}
    assert "unreadable image" in next(p.reason for p in problems if p.line == 4)
    assert all(p.source == f"{cord_dir}:train" for p in problems)
    assert "gt_parse" in next(p.reason for p in problems if p.line == 3)

    test_records, test_problems = load(cord_dir, "cord", split="test", prompt="Read the receipt.")
    assert not test_problems and test_records[0].target["total"]["total_price"] == "9.99"
    assert test_records[0].prompt_text == "Read the receipt."
    with pytest.raises(ValueError, match="no split 'validation'.*train, test"):
        load(cord_dir, "cord", split="validation")


# --- DocVQA (lmms-lab/DocVQA, config DocVQA) -----------------------------------------------------
DOCVQA_FEATURES = Features(
    {
        "questionId": Value("string"),
        "question": Value("string"),
        "question_types": List(Value("string")),
        "image": HFImage(),
        "docId": Value("int64"),
        "ucsf_document_id": Value("string"),
        "ucsf_document_page_no": Value("string"),
        "answers": List(Value("string")),
        "data_split": Value("string"),
    }
)


def test_docvqa_parquet_keeps_all_answers_and_doc_type(tmp_path: Path) -> None:
    data = {
        "questionId": ["49153", "24580", "57344"],
        "question": ["What is the ‘actual’ value per 1000, during the year 1975?", "What is the date?", ""],
        "question_types": [["figure/diagram"], ["layout", "form"], ["others"]],
        "image": [img(), img(100), img(30)],
        "docId": [14465, 2, 3],
        "ucsf_document_id": ["pybv0228", "x", "y"],
        "ucsf_document_page_no": ["81", "1", "2"],
        "answers": [["0.28", "0.28 "], ["May 1, 1975", "1 May 1975"], ["x"]],
        "data_split": ["val", "val", "val"],
    }
    path = tmp_path / "docvqa.parquet"
    Dataset.from_dict(data, features=DOCVQA_FEATURES).to_parquet(str(path))
    records, problems = load("parquet", "docvqa", data_files=[str(path)], split="validation")
    assert [r.id for r in records] == ["49153", "24580"]
    assert records[0].answers == ["0.28"]  # stripped and de-duplicated
    assert records[1].answers == ["May 1, 1975", "1 May 1975"]
    assert records[1].messages[-1]["content"] == "May 1, 1975"
    assert records[1].prompt_text.startswith("What is the date?\n")
    assert records[0].meta["doc_type"] == "figure/diagram"
    assert records[1].meta["doc_type"] == "layout, form"
    assert [(p.line, p.field) for p in problems] == [(2, "question")]
    assert problems[0].source == "parquet:validation"


def test_docvqa_test_split_without_answers(tmp_path: Path) -> None:
    data = {
        "questionId": ["1"],
        "question": ["Who?"],
        "question_types": [None],
        "image": [img()],
        "docId": [1],
        "ucsf_document_id": ["a"],
        "ucsf_document_page_no": ["1"],
        "answers": [None],
        "data_split": ["test"],
    }
    path = tmp_path / "docvqa"
    Dataset.from_dict(data, features=DOCVQA_FEATURES).save_to_disk(str(path))
    _, problems = load(path, "docvqa")
    assert [(p.line, p.field, p.reason) for p in problems] == [(0, "answers", "missing answer")]
    records, problems = load(path, "docvqa", require_answer=False)
    assert not problems and records[0].answers == [] and records[0].messages[-1]["role"] == "user"
    assert "doc_type" not in records[0].meta


# --- InfographicVQA (lmms-lab/DocVQA, config InfographicVQA) -------------------------------------
def test_infovqa_saved_dataset(tmp_path: Path) -> None:
    features = Features(
        {
            "questionId": Value("string"),
            "question": Value("string"),
            "answers": List(Value("string")),
            "answer_type": List(Value("string")),
            "image": HFImage(),
            "image_url": Value("string"),
            "operation/reasoning": List(Value("string")),
            "ocr": Value("string"),
            "data_split": Value("string"),
        }
    )
    data = {
        "questionId": ["98313", "98314"],
        "question": ["Which social platform has heavy female audience?", "How many?"],
        "answers": [["pinterest"], []],
        "answer_type": [["single span"], ["number"]],
        "image": [img(), img(10)],
        "image_url": ["https://x/1.jpg", "https://x/2.jpg"],
        "operation/reasoning": [[], ["counting"]],
        "ocr": ["{}", "{}"],
        "data_split": ["val", "val"],
    }
    path = tmp_path / "infovqa"
    Dataset.from_dict(data, features=features).save_to_disk(str(path))
    records, problems = load(path, "infovqa", prompt="Q: {question} A:")
    assert len(records) == 1 and records[0].answers == ["pinterest"]
    assert records[0].prompt_text == "Q: Which social platform has heavy female audience? A:"
    assert records[0].meta["doc_type"] == "single span"
    assert [(p.line, p.field, p.reason) for p in problems] == [(1, "answers", "empty answer")]


# --- ChartQA (HuggingFaceM4/ChartQA) -------------------------------------------------------------
def test_chartqa_parquet_file_path(tmp_path: Path) -> None:
    features = Features(
        {
            "image": HFImage(),
            "query": Value("string"),
            "label": List(Value("string")),
            "human_or_machine": ClassLabel(names=["human", "machine"]),
        }
    )
    data = {
        "image": [img(), img(5)],
        "query": ["Is the value of Favorable 38 in 2015?", "What's the max?"],
        "label": [["Yes"], ["27"]],
        "human_or_machine": [0, 1],
    }
    path = tmp_path / "chartqa-test.parquet"
    Dataset.from_dict(data, features=features).to_parquet(str(path))
    records, problems = load(path, "chartqa", split="test")
    assert not problems
    assert [r.answers for r in records] == [["Yes"], ["27"]]
    assert [r.meta["doc_type"] for r in records] == ["human", "machine"]
    assert records[1].prompt_text.startswith("What's the max?")
    assert records[0].id == "chartqa-test-0"  # the file stem, not "chartqa-test-test-0"


# --- LaTeX OCR (unsloth/LaTeX_OCR) as an image folder with metadata ------------------------------
def test_latex_ocr_imagefolder(tmp_path: Path) -> None:
    folder = tmp_path / "latex" / "train"
    folder.mkdir(parents=True)
    rows = [("0.png", r"\frac{a}{b}"), ("1.png", "   "), ("2.png", r"x^{2}")]
    with (folder / "metadata.jsonl").open("w") as fh:
        for i, (name, text) in enumerate(rows):
            img(40 * i + 10).save(folder / name)
            fh.write(json.dumps({"file_name": name, "text": text}) + "\n")
    records, problems = load(tmp_path / "latex", "latex_ocr")
    assert sorted(r.answers[0] for r in records) == [r"\frac{a}{b}", r"x^{2}"]
    assert records[0].prompt_text == "Write the LaTeX representation of this formula."
    assert [(p.field, p.reason) for p in problems] == [("text", "empty answer")]


# --- captcha (project-sloth/captcha-images) ------------------------------------------------------
def test_captcha_data_files_and_limit(tmp_path: Path) -> None:
    features = Features({"image": HFImage(), "solution": Value("string")})
    path = tmp_path / "captcha.parquet"
    data = {"image": [img(i * 30) for i in range(5)], "solution": ["a1b2c", "zz9", "", "k", "m"]}
    Dataset.from_dict(data, features=features).to_parquet(str(path))
    records, problems = load(tmp_path, "captcha", data_files=str(path), limit=3)
    assert [r.answers for r in records] == [["a1b2c"], ["zz9"]]
    assert [(p.line, p.field) for p in problems] == [(2, "solution")]
    assert "captcha" in records[0].prompt_text


# --- receipts with a JSON column (name configurable) ---------------------------------------------
def test_receipts_json_configurable_column(tmp_path: Path) -> None:
    features = Features({"image": HFImage(), "json_data": Value("string"), "file": Value("string")})
    targets = [
        json.dumps({"butik": "ICA Nära", "total": "123,50", "datum": "2024-05-01"}),
        json.dumps({"gt_parse": {"butik": "Coop", "total": "9,90"}}),
        "not json",
        "{}",
    ]
    data = {"image": [img(), img(1), img(2), img(3)], "json_data": targets, "file": ["a", "b", "c", "d"]}
    path = tmp_path / "receipts"
    Dataset.from_dict(data, features=features).save_to_disk(str(path))
    records, problems = load(path, "receipts_json", columns={"target": "json_data"})
    assert records[0].target == {"butik": "ICA Nära", "total": "123,50", "datum": "2024-05-01"}
    assert records[0].answers == [compact_json(records[0].target)]
    assert records[1].target == {"butik": "Coop", "total": "9,90"}
    assert [(p.line, p.field) for p in problems] == [(2, "json_data"), (3, "json_data")]
    assert "not valid JSON" in problems[0].reason
    with pytest.raises(ValueError, match="receipts_json.*needs.*target.*json_data"):
        load(path, "receipts_json")


# --- generic column mapping ----------------------------------------------------------------------
@pytest.fixture
def generic_dir(tmp_path: Path) -> Path:
    features = Features(
        {"scan": HFImage(), "q": Value("string"), "a": Value("string"), "kind": Value("string")}
    )
    data = {
        "scan": [img(), img(9)],
        "q": ["What is the total?", "Store?"],
        "a": ["12", "ACME"],
        "kind": ["r", "r"],
    }
    path = tmp_path / "generic"
    Dataset.from_dict(data, features=features).save_to_disk(str(path))
    return path


def test_generic_column_mapping(generic_dir: Path) -> None:
    columns = {"image": "scan", "question": "q", "answer": "a", "doc_type": "kind"}
    records, problems = load_hf_records(
        str(generic_dir), columns=columns, default_prompt="unused", default_system="Be brief."
    )
    assert not problems
    assert records[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the total?"},
        {"role": "assistant", "content": "12"},
    ]
    assert records[1].meta["doc_type"] == "r"
    assert records[1].id == "generic-train-1"

    no_question, _ = load(generic_dir, "generic", columns={"image": "scan", "answer": "a"})
    assert no_question[0].prompt_text == "JSON please"


def test_generic_mapping_errors(generic_dir: Path) -> None:
    with pytest.raises(
        ValueError, match=r"column 'qq' \(columns.question\) is not in the dataset.*scan, q, a"
    ):
        load(generic_dir, "generic", columns={"image": "scan", "question": "qq", "answer": "a"})
    with pytest.raises(ValueError, match=r"no field\(s\) \['imgae'\]"):
        load(generic_dir, "generic", columns={"imgae": "scan"})
    with pytest.raises(ValueError, match="needs field.*image"):
        load(generic_dir, "generic", columns={"answer": "a"})
    with pytest.raises(ValueError, match="unknown dataset adapter 'docqa'"):
        load(generic_dir, "docqa")


# --- specs ---------------------------------------------------------------------------------------
def test_load_spec_variants(tmp_path: Path, generic_dir: Path) -> None:
    spec = {
        "path": str(generic_dir),
        "columns": {"image": "scan", "question": "q", "answer": "a"},
        "limit": 1,
    }
    records, problems = load_spec(spec)
    assert len(records) == 1 and not problems
    assert load_spec(DatasetSpec.from_dict(spec))[0][0].answers == ["12"]
    with pytest.raises(ValueError, match=r"unknown dataset spec key\(s\) \['column'\]"):
        load_spec({"path": "x", "column": {}})
    with pytest.raises(ValueError, match="unknown dataset adapter"):
        DatasetSpec(path="x", adapter="nope")

    img().save(tmp_path / "a.png")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"image": "a.png", "answer": "hi"}) + "\n")
    records, problems = load_spec(str(jsonl))
    assert not problems and records[0].answers == ["hi"] and records[0].meta["line"] == 1


# --- the hub -------------------------------------------------------------------------------------
def test_hub_name_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match="'naver-clova-ix/cord-v2'.*unreachable"):
        load_spec({"path": "naver-clova-ix/cord-v2", "adapter": "cord"})
    assert time.monotonic() - start < 10


def test_hub_unreachable_online_mode_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match="'lmms-lab/DocVQA'.*hub.*unreachable"):
        load("lmms-lab/DocVQA", "docvqa", name="DocVQA", split="validation")
    assert time.monotonic() - start < 10


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset path not found"):
        load(tmp_path / "nope", "generic")


def test_generic_multi_image_rows_and_json_answers(tmp_path: Path) -> None:
    features = Features({"images": List(HFImage()), "answer": Value("string"), "target": Value("string")})
    data = {"images": [[img(1), img(2)], []], "answer": ["a", "b"], "target": ['{"k": 1}', '{"k": 2}']}
    path = tmp_path / "multi"
    Dataset.from_dict(data, features=features).save_to_disk(str(path))
    records, problems = load(path, "generic")
    assert len(records[0].images) == 2 and all(isinstance(i, Image.Image) for i in records[0].images)
    assert records[0].target == {"k": 1} and records[0].answers == ['{"k": 1}']
    assert [(p.line, p.field, p.reason) for p in problems] == [(1, "images", "empty image list")]


@pytest.mark.parametrize("kind", ["parquet", "csv", "messages-parquet"])
def test_relative_image_paths_are_read_from_the_data_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """As in JSONL files: a relative image path in a parquet / CSV row is relative to that file, not to the
    working directory the command runs in."""
    from vlm_lightning.data.sources import load_spec

    folder = tmp_path / "dataset"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (16, 16), "white").save(folder / "img" / "a.png")
    if kind == "messages-parquet":
        rows = {
            "image": ["img/a.png"],
            "messages": [[{"role": "user", "content": "Total?"}, {"role": "assistant", "content": "12"}]],
        }
    else:
        rows = {"image": ["img/a.png"], "question": ["Total?"], "answer": ["12"]}
    suffix = "csv" if kind == "csv" else "parquet"
    data_file = folder / f"train.{suffix}"
    table = Dataset.from_dict(rows)
    table.to_csv(str(data_file)) if suffix == "csv" else table.to_parquet(str(data_file))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the image is not reachable from here by its relative path
    records, problems = load_spec(str(data_file))
    assert not problems, problems
    assert [Path(r.images[0]) for r in records] == [folder / "img" / "a.png"]
    assert records[0].answers == ["12"]


@pytest.mark.parametrize("kind", ["parquet", "csv", "messages-parquet"])
def test_restrict_image_paths_refuses_dataset_paths_outside_the_folder_as_jsonl_does(
    tmp_path: Path, kind: str
) -> None:
    """``data.restrict_image_paths``: a parquet / CSV row whose image path leaves the data file's folder is
    refused with the JSONL path's error type and message (file, row, field, reason)."""
    from vlm_lightning.data.datamodule import DocumentDataModule
    from vlm_lightning.data.records import DataValidationError, read_jsonl

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (16, 16), "white").save(outside / "a.png")
    folder = tmp_path / "dataset"
    folder.mkdir()
    paths = ["../outside/a.png", str(outside / "a.png")]  # climbing out, and absolute
    if kind == "messages-parquet":
        turns = [{"role": "user", "content": "Total?"}, {"role": "assistant", "content": "12"}]
        rows = {"image": paths, "messages": [turns, turns]}
    else:
        rows = {"image": paths, "question": ["Total?"] * 2, "answer": ["12"] * 2}
    suffix = "csv" if kind == "csv" else "parquet"
    data_file = folder / f"train.{suffix}"
    table = Dataset.from_dict(rows)
    table.to_csv(str(data_file), index=False) if suffix == "csv" else table.to_parquet(str(data_file))
    jsonl = folder / "train.jsonl"
    jsonl.write_text("".join(json.dumps(dict(zip(rows, values))) + "\n" for values in zip(*rows.values())))

    records, problems = load_spec(str(data_file))  # allowed unless restricted: the files exist
    assert len(records) == 2 and not problems, problems
    _, expected = read_jsonl(jsonl, restrict_to_root=True)
    records, problems = load_spec(str(data_file), restrict_to_root=True)
    assert records == []
    assert [(p.field, p.reason) for p in problems] == [(p.field, p.reason) for p in expected]
    assert all(p.reason.startswith(f"path escapes the dataset root {folder}: ") for p in problems)

    for train in (str(jsonl), str(data_file)):
        dm = DocumentDataModule(train=train, restrict_image_paths=True, check_lengths=False)
        with pytest.raises(DataValidationError) as info:
            dm.prepare("fit")
        assert "2 bad row(s)" in str(info.value)
        assert f"field 'image': path escapes the dataset root {folder}: ../outside/a.png" in str(info.value)
