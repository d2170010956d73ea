"""No swap of a library attribute outside ``vlm_lightning/patches/`` (where ``PATCHES`` lists each one), and no
warning filter outside ``cli/library_noise.py`` except inside a ``with warnings.catch_warnings()`` block.

Flagged outside the patches package: ``types.MethodType(...)``; assigning or deleting an attribute named
``forward``; assigning a lambda to an attribute; ``setattr(...)``; assigning to an attribute of a name bound by
an import of another library (``torch.x.y = ...``). What is not a library patch is allowed below, with a reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vlm_lightning"

#: (file under vlm_lightning/, the flagged expression) -> why it is not a patch of a library
ALLOWED: dict[tuple[str, str], str] = {
    ("models/acceleration.py", "layer.forward"): (
        "regional compilation: our model's own layer forward compiled, the same computation (registry docstring "
        "lists the dynamo limits it raises)"
    ),
    ("models/acceleration.py", "module.forward"): (
        "uncompiled_layers puts back the compiled wrapper that compile_layers made (generation runs the class's "
        "own forward in between)"
    ),
    ("models/acceleration.py", "setattr(config, ...)"): (
        "torch._dynamo.config recompile limits raised for per-layer guards (process-wide, listed in the "
        "vlm_lightning.patches docstring)"
    ),
    ("models/acceleration.py", "torch._functorch.config.activation_memory_budget"): (
        "compiler-side activation recomputation asked for by the user (process-wide, listed in the "
        "vlm_lightning.patches docstring)"
    ),
    ("models/sliced_mlp.py", "mlp.forward"): (
        "recompute mode: one model instance's MLP forward run over sequence slices, the same computation (its "
        "class and transformers' code untouched; tested for every family in tests/models/test_sliced_mlp.py)"
    ),
    ("metrics/text.py", "setattr(self, ...)"): "a torchmetrics state of our own metric class",
}
#: files that may add a warning filter outside a catch_warnings block, and why
FILTERS_ALLOWED: dict[str, str] = {
    "cli/library_noise.py": "the one table of silenced library messages, installed at CLI start",
    "patches/host_sync_warnings.py": "HostSyncReport's window (registry entry host_sync_warnings), restored at stop",
}


def _library_names(tree: ast.Module) -> set[str]:
    """Names bound by imports of other libraries (``import torch``, ``from peft import LoraConfig``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("vlm_lightning"):
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith(("vlm_lightning", "__future__")):
                names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def swaps(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, expression) of each swap-like statement in ``tree``."""
    library = _library_names(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "MethodType":
                found.append((node.lineno, "MethodType(...)"))
            elif name == "setattr" and isinstance(func, ast.Name) and node.args:
                found.append((node.lineno, f"setattr({ast.unparse(node.args[0])}, ...)"))
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for target in targets:
            if not isinstance(target, ast.Attribute):
                continue
            lambda_value = isinstance(getattr(node, "value", None), ast.Lambda)
            if target.attr == "forward" or lambda_value or _root(target) in library:
                found.append((target.lineno, ast.unparse(target)))
    return found


def _outside_catch_warnings_filters(tree: ast.Module) -> list[int]:
    """Lines of ``warnings.filterwarnings`` / ``simplefilter`` calls not inside ``with warnings.catch_warnings``."""
    scoped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
            "catch_warnings" in ast.unparse(item.context_expr) for item in node.items
        ):
            scoped.update(id(inner) for inner in ast.walk(node))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("filterwarnings", "simplefilter")
        and id(node) not in scoped
    ]


def _sources() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_library_swap_is_in_the_patches_package() -> None:
    found = {
        (name, expr): line
        for name, tree in _sources().items()
        if not name.startswith("patches/")
        for line, expr in swaps(tree)
    }
    unregistered = {
        f"{name}:{line}: {expr}" for (name, expr), line in found.items() if (name, expr) not in ALLOWED
    }
    assert not unregistered, (
        "move these swaps of library attributes into vlm_lightning/patches/ (one module per patch family, an "
        f"UpstreamPatch row in vlm_lightning/patches/__init__.py), or allow-list them here with a reason: "
        f"{sorted(unregistered)}"
    )
    stale = set(ALLOWED) - set(found)
    assert not stale, f"allow-listed but no longer in the code: {sorted(stale)}"


def test_the_scan_finds_what_it_looks_for() -> None:
    code = (
        "import types\nimport torch\nfrom peft import LoraConfig\n"
        "m.forward = f\nm.get_x = types.MethodType(g, m)\nsetattr(m, 'a', 1)\ntorch.x.y = 1\n"
        "LoraConfig.z = 2\nm.h = lambda x: x\ndel m.forward\nself.n = 3\n"
    )
    assert sorted(line for line, _ in swaps(ast.parse(code))) == [4, 5, 6, 7, 8, 9, 10]


def test_warning_filters_only_in_the_noise_table_or_scoped() -> None:
    offenders = {
        name: lines
        for name, tree in _sources().items()
        if name not in FILTERS_ALLOWED and (lines := _outside_catch_warnings_filters(tree))
    }
    assert not offenders, (
        "a warning filter added at run time: silence library messages in cli/library_noise.py, or scope the filter "
        f"in a `with warnings.catch_warnings():` block with its reason: {offenders}"
    )
    for name in FILTERS_ALLOWED:
        assert _outside_catch_warnings_filters(_sources()[name]), (
            f"{name} adds no filter any more: drop it here"
        )
