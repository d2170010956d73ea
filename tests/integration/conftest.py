"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def receipt_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small receipt-like train / val / test JSONL files (8 / 3 / 5 rows), written once per test module."""
    from fixtures_data import write_receipt_dataset

    return write_receipt_dataset(tmp_path_factory.mktemp("receipt-data"))
