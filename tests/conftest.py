"""Shared fixtures: CPU only, offline, tiny replicas built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_replica(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Return a function building (once per session) the tiny replica folder of a family."""
    from vlm_lightning.replicas.registry import build_tiny

    root = tmp_path_factory.mktemp("replicas")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build_tiny(family, root / family)
        return cache[family]

    return get
