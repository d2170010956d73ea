"""The errors of one bad dataset row: one per field (:class:`RowError`), all of a row (:class:`RowErrors`)."""

from __future__ import annotations


class RowError(ValueError):
    """One bad field of one row (``field`` is the adapter's logical field name)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class RowErrors(ValueError):
    """Every bad field of one row."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors
