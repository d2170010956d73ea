"""The datamodule: augmentation on train only and reproducible, leakage refused, dataset specs, lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import write_receipt_dataset

from vlm_lightning.data.datamodule import DocumentDataModule
from vlm_lightning.data.leakage import LeakageError


def make(tiny_replica, data: dict[str, Path], **kwargs) -> DocumentDataModule:  # noqa: ANN001
    args = {
        "train": str(data["train"]),
        "val": str(data["val"]),
        "test": str(data["test"]),
        "processor_name": str(tiny_replica("qwen2_vl")),
        "max_length": 400,
        "image_max_tokens": 16,
    }
    return DocumentDataModule(**{**args, **kwargs})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_receipt_dataset(tmp_path_factory.mktemp("dm"), n_train=4, n_val=2, n_test=2)


def test_augmentation_applies_to_train_copies_only_and_is_reproducible(tiny_replica, data) -> None:  # noqa: ANN001
    dm = make(tiny_replica, data, augment="default", augment_copies=2, augment_p=1.0)
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train) == 4 * 3
    originals = [i for i, r in enumerate(train.records) if "augment_key" not in r.meta]
    copies = [i for i, r in enumerate(train.records) if "augment_key" in r.meta]
    assert len(originals) == 4 and len(copies) == 8
    orig_pixels = np.asarray(train[originals[0]][1][0])
    copy_pixels = np.asarray(train[copies[0]][1][0])
    assert not np.array_equal(orig_pixels, copy_pixels)
    assert np.array_equal(copy_pixels, np.asarray(train[copies[0]][1][0]))  # same key -> same image
    again = make(tiny_replica, data, augment="default", augment_copies=2, augment_p=1.0)
    again.setup("fit")
    assert np.array_equal(copy_pixels, np.asarray(again.datasets["train"][copies[0]][1][0]))
    val = dm.datasets["val"]
    assert all("augment_key" not in r.meta for r in val.records) and val.augmenter is None


def test_lengths_are_recorded_for_length_aware_batching(tiny_replica, data) -> None:  # noqa: ANN001
    dm = make(tiny_replica, data)
    dm.setup("fit")
    lengths = dm.datasets["train"].lengths
    assert lengths is not None and len(lengths) == 4 and all(n > 16 for n in lengths)


def test_group_by_length_batches_use_the_recorded_lengths(tiny_replica, data) -> None:  # noqa: ANN001
    dm = make(tiny_replica, data, batch_size=2, group_by_length=True)
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    lengths = dm.datasets["train"].lengths
    assert sampler.lengths == lengths and sampler.batch_size == 2
    order = list(sampler)
    assert sorted(order) == [0, 1, 2, 3]
    ranked = sorted(lengths, reverse=True)  # each batch holds two neighbours in length order
    groups = sorted(sorted((lengths[i] for i in g), reverse=True) for g in (order[:2], order[2:]))
    assert groups == sorted([ranked[:2], ranked[2:]])


def test_group_by_length_needs_the_length_check(tiny_replica, data) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="group_by_length needs the sample lengths"):  # at construction
        make(tiny_replica, data, batch_size=2, group_by_length=True, check_lengths=False)


def test_leakage_between_train_and_test_is_an_error(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    leaky = tmp_path / "test.jsonl"
    first = json.loads(data["train"].read_text().splitlines()[0])
    first["image"] = str(data["train"].parent / first["image"])
    first["id"] = "fresh-id"
    leaky.write_text(json.dumps(first) + "\n")
    with pytest.raises(LeakageError, match="train"):
        make(tiny_replica, {**data, "test": leaky}).setup("fit")
    make(tiny_replica, {**data, "test": leaky}, leakage="warn").setup("fit")


def test_dataset_spec_with_adapter(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    import datasets
    from PIL import Image

    image = Image.open(data["train"].parent / "images" / "train-0.png")
    ds = datasets.Dataset.from_dict(
        {
            "image": [image, image],
            "query": ["What is the total?", "Store?"],
            "label": [["12.5"], ["ACME"]],
            "human_or_machine": [0, 1],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "query": datasets.Value("string"),
                "label": datasets.Sequence(datasets.Value("string")),
                "human_or_machine": datasets.ClassLabel(names=["human", "machine"]),
            }
        ),
    )
    folder = tmp_path / "chartqa"
    ds.save_to_disk(str(folder))
    dm = make(tiny_replica, data, train={"path": str(folder), "adapter": "chartqa"}, leakage="off")
    dm.setup("fit")
    records = dm.datasets["train"].records
    assert [r.answers for r in records] == [["12.5"], ["ACME"]]
    assert "What is the total?" in records[0].messages[-2]["content"]


def test_enhancement_applies_to_every_split(tiny_replica, data) -> None:  # noqa: ANN001
    plain = make(tiny_replica, data)
    plain.setup("fit")
    enhanced = make(tiny_replica, data, enhance_contrast=1.8, max_image_side=64)
    enhanced.setup("fit")
    for split in ("train", "val"):
        a, b = plain.datasets[split][0][1][0], enhanced.datasets[split][0][1][0]
        assert max(b.size) == 64 and max(a.size) > 64
        assert np.asarray(b).std() > np.asarray(a.resize(b.size)).std()


def test_cache_hits_on_second_run_and_invalidates_on_setting_change(tiny_replica, data, tmp_path) -> None:  # noqa: ANN001
    import time

    from vlm_lightning.data.collator import ChatCollator

    calls = {"n": 0}
    original = ChatCollator.lengths

    def counting(self, items):  # noqa: ANN001, ANN202
        calls["n"] += 1
        return original(self, items)

    cache = str(tmp_path / "cache")
    ChatCollator.lengths = counting
    try:
        start = time.perf_counter()
        first = make(tiny_replica, data, cache_dir=cache, max_image_side=80)
        first.setup("fit")
        cold = time.perf_counter() - start
        pixels = np.asarray(first.datasets["train"][0][1][0])  # writes the processed image
        assert calls["n"] > 0 and list((tmp_path / "cache" / "images").rglob("*.png"))
        calls["n"] = 0
        start = time.perf_counter()
        second = make(tiny_replica, data, cache_dir=cache, max_image_side=80)
        second.setup("fit")
        warm = time.perf_counter() - start
        assert calls["n"] == 0  # token lengths reused
        assert second.datasets["train"].lengths == first.datasets["train"].lengths
        hits = second.cache.hits
        assert np.array_equal(np.asarray(second.datasets["train"][0][1][0]), pixels)
        assert second.cache.hits == hits + 1  # processed image reused
        print(f"length check: cold {cold:.2f} s, from cache {warm:.2f} s")
        make(tiny_replica, data, cache_dir=cache, max_image_side=80, max_length=390).setup("fit")
        assert calls["n"] > 0  # a setting that changes tokens invalidates the entry
        calls["n"] = 0
        make(tiny_replica, data, cache_dir=cache, max_image_side=80, clear_cache=True).setup("fit")
        assert calls["n"] > 0  # cleared
    finally:
        ChatCollator.lengths = original


def test_max_length_cutting_most_answers_stops_with_the_length_that_fits(tiny_replica, data) -> None:  # noqa: ANN001
    from vlm_lightning.errors import SettingError

    full = make(tiny_replica, data)
    full.setup("fit")
    lengths = sorted(full.datasets["train"].lengths)
    short = lengths[0] - 1  # cuts every answer (each answer's tail is longer than one token)
    dm = make(tiny_replica, data, max_length=short)
    with pytest.raises(SettingError) as info:
        dm.setup("fit")
    text = str(info.value)
    assert text.startswith(f"data.max_length {short} is too small for the data:")
    assert f"4 of 4 training samples (100%) are longer than data.max_length {short}" in text
    assert "end-of-turn token" in text
    # 4 samples: the 95 % length is the longest one, named once
    assert f"--data.max_length {lengths[-1]} keeps every answer whole" in text
    assert "token lengths:0" not in text and "bad row" not in text
    allowed = make(tiny_replica, data, max_length=short, max_cut_fraction=1.0)
    allowed.setup("fit")  # the user's explicit choice: trains with cut answers (and warns)
    assert allowed.datasets["train"].lengths == [short] * 4


def test_max_cut_fraction_out_of_range_is_a_setting_error(tiny_replica, data) -> None:  # noqa: ANN001
    from vlm_lightning.errors import SettingError

    with pytest.raises(SettingError, match=r"data.max_cut_fraction must be within \[0, 1\], got 1.5"):
        make(tiny_replica, data, max_cut_fraction=1.5)
