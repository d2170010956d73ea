"""The package's shape: small modules, and stages that depend only on earlier ones where it matters."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_lightning"
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_package_file_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_data_loading_does_not_import_training() -> None:
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith("vlm_lightning.training"))
        for p in (PACKAGE / "data").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_patches_import_no_other_stage() -> None:
    """``patches/`` (every swap of a library attribute) is a leaf: the stages import it, never the reverse."""
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(
            m
            for m in _imports(p)
            if m.startswith("vlm_lightning") and not m.startswith("vlm_lightning.patches")
        )
        for p in (PACKAGE / "patches").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders
