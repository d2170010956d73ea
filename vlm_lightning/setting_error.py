"""``SettingError``: a callback, profiler or option built with a value it cannot work with.

jsonargparse builds callbacks and profilers from the command line and wraps an exception raised in their
``__init__`` into its own ``ValueError`` ("Does not validate against any of the Union subtypes ...") with
the original as the cause; ``vlm_lightning.cli.lightning_cli.main`` finds the ``SettingError`` in that chain and prints
only its message.
"""

from __future__ import annotations


class SettingError(ValueError):
    """A setting out of range or incompatible with the run; the message names the setting and the value."""


def setting_error_in(exc: BaseException) -> SettingError | None:
    """The ``SettingError`` that caused ``exc`` (itself, or along ``__cause__`` / ``__context__``)."""
    found = cause_of(exc, SettingError)
    return found if isinstance(found, SettingError) else None


def cause_of(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The exception of type ``kind`` in ``exc``'s chain (itself, or along ``__cause__`` / ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def missing_package_message(exc: BaseException) -> str | None:
    """What to install when a logger / callback given in the config needs a package that is missing."""
    missing = cause_of(exc, ModuleNotFoundError)
    if missing is None:
        return None
    first = str(missing).strip().splitlines()[0] if str(missing).strip() else "a package is missing"
    name = getattr(missing, "name", None)
    install = f"pip install {name.split('.')[0]}" if name else "install the package it names"
    if "tensorboard" in first.lower():
        install = "pip install tensorboard"
    return f"a class in the config needs a package that is not installed ({first}): {install}"
