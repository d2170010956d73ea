"""Leakage: the same image file (or id, or image + question) in two splits is found; disjoint splits pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlm_lightning.data.leakage import LeakageError, check_leakage, image_digest, normalise_text
from vlm_lightning.data.records import Record


def make_image(path: Path, shade: int) -> str:
    Image.new("RGB", (16, 12), (shade, 0, 0)).save(path)
    return str(path)


def rec(rid: str, image: str | Image.Image, question: str = "Total?") -> Record:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": "1"}]
    return Record(rid, [image], messages, ["1"])


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    return [make_image(tmp_path / f"{i}.png", 40 * i) for i in range(5)]


def test_disjoint_splits_pass(images: list[str]) -> None:
    report = check_leakage(
        {"train": [rec("a", images[0]), rec("b", images[1])], "test": [rec("c", images[2])]}
    )
    assert not report.any and report.overlaps == []
    assert "no leakage" in report.summary()
    report.raise_if_any()


def test_same_image_file_in_train_and_test(images: list[str], tmp_path: Path) -> None:
    copy = tmp_path / "copy-of-1.png"
    shutil.copy(images[1], copy)  # same bytes under another name still leaks
    splits = {
        "train": [rec("a", images[0]), rec("b", images[1])],
        "val": [rec("v", images[3])],
        "test": [rec("c", str(copy), question="  TOTAL "), rec("d", images[4])],
    }
    report = check_leakage(splits)
    assert {(o.split_a, o.split_b, o.kind) for o in report.overlaps} == {
        ("train", "test", "image"),
        ("train", "test", "sample"),
    }
    image_overlap = report.between("test", "train")[0]
    assert image_overlap.pairs == [("b", "c")]
    assert not report.between("train", "val")
    with pytest.raises(LeakageError, match="train <-> test: 1 shared image") as info:
        report.raise_if_any()
    assert "--data.leakage warn" in str(info.value)  # the setting that allows it
    report.raise_if_any(allow=True)  # only a warning


def test_shared_ids_and_in_memory_images() -> None:
    pil = Image.new("RGB", (8, 8), "blue")
    report = check_leakage({"train": [rec("x", pil)], "test": [rec("x", Image.new("RGB", (8, 8), "red"))]})
    assert [o.kind for o in report.overlaps] == ["id"]
    same = check_leakage({"train": [rec("x", pil)], "test": [rec("y", pil.copy(), "Store?")]})
    assert [o.kind for o in same.overlaps] == ["image"]  # same pixels, different question


def test_digest_and_normalisation(images: list[str]) -> None:
    assert image_digest(images[0]) == image_digest(Path(images[0]))
    assert image_digest(images[0]) != image_digest(images[1])
    assert normalise_text("  What is the\tTOTAL? ") == normalise_text("what is the total")


def test_an_evaluation_on_the_training_file_is_named(tmp_path) -> None:  # noqa: ANN001
    from vlm_lightning.data.leakage import evaluated_on_training_file

    train, other = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("{}\n")
    other.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(train)
    message = evaluated_on_training_file({"train": str(train), "test": str(tmp_path / "link.jsonl")}, "test")
    assert message and "data.test is the training file" in message and "in-sample" not in message
    assert evaluated_on_training_file({"train": str(train), "test": str(other)}, "test") is None
    assert evaluated_on_training_file({"train": None, "test": str(train)}, "test") is None
    assert evaluated_on_training_file({"train": {"path": "x"}, "test": str(train)}, "test") is None
