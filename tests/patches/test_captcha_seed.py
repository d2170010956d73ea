"""The seeded stand-in for ``secrets`` inside ``captcha.image`` (``patches/captcha_seed.py``)."""

from __future__ import annotations

import ast
import inspect
import random
import secrets

import captcha.image

from vlm_lightning.patches.captcha_seed import _SeededSecrets, seeded_captcha_module

PROVIDED = {name for name in vars(_SeededSecrets) if not name.startswith("_")}


def test_captcha_calls_only_what_the_seeded_stand_in_provides() -> None:
    """Every ``secrets.X`` / ``random.X`` that captcha calls exists on the stand-in (and in the real module)."""
    used = {
        node.attr
        for node in ast.walk(ast.parse(inspect.getsource(captcha.image)))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if node.value.id in ("secrets", "random")
    }
    assert used, "captcha no longer draws from secrets: drop the patch"
    assert used <= PROVIDED, f"captcha now calls {sorted(used - PROVIDED)}: add them to _SeededSecrets"
    real = {*vars(secrets), *vars(random)}
    assert PROVIDED <= real, sorted(PROVIDED - real)


def test_seeded_stand_in_keeps_the_secrets_contract() -> None:
    """Each stand-in function returns what the library's function may return (its range), reproducibly."""
    draws = []
    for _ in range(2):
        shim = _SeededSecrets(random.Random(7))
        values = []
        for _ in range(200):
            below, bits = shim.randbelow(5), shim.randbits(3)
            assert 0 <= below < 5 and 0 <= bits < 8  # secrets.randbelow / randbits
            pick, whole = shim.choice("abc"), shim.randint(2, 4)
            assert pick in "abc" and 2 <= whole <= 4  # secrets.choice / random.randint (both ends)
            unit, span = shim.random(), shim.uniform(1.5, 2.5)
            assert 0.0 <= unit < 1.0 and 1.5 <= span <= 2.5
            values.append((below, bits, pick, whole, unit, span))
        draws.append(values)
    assert draws[0] == draws[1]
    assert len({v[0] for v in draws[0]}) == 5  # the whole range is reached


def test_the_library_module_is_restored_and_draws_are_seeded() -> None:
    with seeded_captcha_module(random.Random(0)):
        assert isinstance(captcha.image.secrets, _SeededSecrets)
        first = captcha.image.secrets.randbelow(10**9)
    with seeded_captcha_module(random.Random(0)):
        again = captcha.image.secrets.randbelow(10**9)
    assert captcha.image.secrets is secrets and first == again
