"""User mistakes: one ``UserError`` base, and ``SettingError`` for settings built with values they cannot use.

Every error a user can fix (bad data rows, a checkpoint of another run, a setting out of range, a model that is
not a supported family, ...) derives from ``UserError``; the command line catches that one type and prints its
message on one line with exit code 2, no traceback (``cli.lightning_cli.main`` and each tool's ``main``).

jsonargparse builds callbacks and profilers from the command line and wraps an exception raised in their
``__init__`` into its own ``ValueError`` ("Does not validate against any of the Union subtypes ...") with
the original as the cause; ``setting_error_in`` finds the ``SettingError`` in that chain.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what and how (printed without a traceback)."""


class SettingError(UserError, ValueError):
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
