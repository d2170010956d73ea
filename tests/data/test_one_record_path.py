"""One row -> Record path: the same rows as JSONL, parquet and a saved dataset give the same Records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_lightning.data.image_files import load_image
from vlm_lightning.data.records import read_jsonl
from vlm_lightning.data.sources import load_spec


@pytest.fixture()
def rows(tmp_path: Path) -> list[dict]:
    paths = []
    for i in range(3):
        path = tmp_path / f"doc{i}.png"
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(path)
        paths.append(str(path))
    return [
        {"id": "a", "img": paths[0], "query": "Total?", "answer": "4.50", "messages": None},
        {"id": "b", "image": paths[1], "question": "Store?", "answer": "ACME", "messages": None},
        {
            "id": "c",
            "image": paths[2],
            "messages": [
                {"role": "user", "content": "What is this?"},
                {"role": "assistant", "content": "A receipt."},
                {"role": "user", "content": "From where?"},
                {"role": "assistant", "content": "ACME"},
            ],
        },
    ]


def _comparable(records: list) -> list[tuple]:
    return [
        (r.id, r.messages, r.answers, [np.asarray(load_image(i)).tolist() for i in r.images]) for r in records
    ]


def test_jsonl_parquet_and_saved_dataset_give_identical_records(rows: list[dict], tmp_path: Path) -> None:
    from datasets import Dataset

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    table = {
        k: [r.get(k) for r in rows] for k in ("id", "image", "img", "question", "query", "answer", "messages")
    }
    image = [r.get("image") or r.get("img") for r in rows]  # a dataset has one image column
    data = Dataset.from_dict(
        {**{k: v for k, v in table.items() if k not in ("image", "img")}, "image": image}
    )
    data.to_parquet(str(tmp_path / "rows.parquet"))
    data.save_to_disk(str(tmp_path / "saved"))

    from_jsonl, problems = read_jsonl(jsonl)
    assert not problems
    expected = _comparable(from_jsonl)
    for spec in (str(tmp_path / "rows.parquet"), str(tmp_path / "saved")):
        records, problems = load_spec(spec)
        assert not problems, problems
        assert _comparable(records) == expected, spec
        assert records[2].meta["row"] == 2 and records[2].where.endswith("row 2")  # one position field
    assert from_jsonl[2].where == f"{jsonl}:3"
