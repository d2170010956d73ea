"""Every registered patch still finds its upstream target with the signature our replacement was written against.

An upgrade of transformers / PEFT / torch that renames, moves or re-signs a patched method fails here, by the
patch's name, instead of silently falling back to the library's path (or running ours on changed semantics).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vlm_lightning.patches import MOMENTS, PATCHES, UpstreamPatch

ROOT = Path(__file__).resolve().parents[2]


def resolve(dotted: str) -> tuple[Any, Any]:
    """(owner, attribute) of ``dotted``: the longest importable module prefix, then attribute lookups."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:-1]:
            assert hasattr(owner, name), f"{dotted}: {owner!r} has no {name!r}"
            owner = getattr(owner, name)
        assert hasattr(owner, parts[-1]), f"{dotted}: {owner!r} has no attribute {parts[-1]!r} any more"
        return owner, getattr(owner, parts[-1])
    raise AssertionError(f"{dotted}: no importable module")


def parameter_names(function: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def owner_source(owner: Any) -> str:
    """The source of a module, or of a class and its bases (attributes may be defined in a base class)."""
    if isinstance(owner, ModuleType):
        return inspect.getsource(owner)
    parts = []
    for cls in inspect.getmro(owner):
        if cls is not object:
            try:
                parts.append(inspect.getsource(cls))
            except (OSError, TypeError):
                continue
    return "\n".join(parts)


def ids(patch: UpstreamPatch) -> str:
    return patch.name


def test_names_are_unique_and_moments_documented() -> None:
    names = [p.name for p in PATCHES]
    assert len(names) == len(set(names)), names
    for patch in PATCHES:
        assert patch.moment in MOMENTS, (patch.name, patch.moment)
    assert {p.moment for p in PATCHES} == set(MOMENTS), "a moment without a patch: drop it from MOMENTS"
    for where in MOMENTS.values():
        assert (ROOT / where).is_file(), where


@pytest.mark.parametrize("patch", PATCHES, ids=ids)
def test_target_exists_with_the_expected_parameters(patch: UpstreamPatch) -> None:
    owner, target = resolve(patch.target)
    if patch.parameters is not None:
        assert callable(target), patch.target
        assert parameter_names(target) == patch.parameters, (
            f"{patch.name}: {patch.target} now takes {parameter_names(target)}; our replacement was written "
            f"against {patch.parameters}: check the patch in vlm_lightning/patches/ against the new code"
        )
    if patch.upstream_reads:
        source = owner_source(owner)
        missing = [name for name in patch.upstream_reads if name not in source]
        assert not missing, f"{patch.name}: {owner!r} no longer mentions {missing}"
    for dotted, expected in patch.also_calls:
        _, called = resolve(dotted)
        assert parameter_names(called) == expected, (patch.name, dotted, parameter_names(called))


@pytest.mark.parametrize("patch", PATCHES, ids=ids)
def test_applied_by_is_ours_and_called_where_the_registry_says(patch: UpstreamPatch) -> None:
    module_name, _, rest = patch.applied_by.partition(".patches.")
    assert module_name == "vlm_lightning" and rest, (
        f"{patch.name}: applied_by must be in vlm_lightning.patches"
    )
    _, applier = resolve(patch.applied_by)
    assert callable(applier), patch.applied_by
    top_name = rest.split(".")[1]  # the module's own name for it: function or class
    source = (ROOT / patch.applied_in).read_text()
    assert top_name in source, f"{patch.name}: {patch.applied_in} does not use {top_name}"


@pytest.mark.parametrize("patch", PATCHES, ids=ids)
def test_equivalence_test_exists(patch: UpstreamPatch) -> None:
    path, _, name = patch.equivalence_test.partition("::")
    file = ROOT / path
    assert file.is_file(), f"{patch.name}: {path} is missing"
    tests = {n.name for n in ast.parse(file.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert name in tests, f"{patch.name}: {path} has no {name}"


def test_packed_conv_binder_names_only_registered_classes() -> None:
    """The binder finds modules by class name: each name it looks for is a registered, importable target."""
    from vlm_lightning.patches.lfm2_packed_conv import SHORT_CONV_CLASSES

    registered = {p.target.split(".")[-2] for p in PATCHES if p.applied_by.endswith("bind_lfm2_packed_conv")}
    assert set(SHORT_CONV_CLASSES) == registered
