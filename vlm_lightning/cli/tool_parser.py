"""The argument parser of the package's tools (``infer``, ``export``, ``compare``, ``tiny``, ``synthetic``).

Two differences from ``argparse.ArgumentParser``: an option must be spelt in full (``--images`` is not taken
for ``--images-dir``: with abbreviations a near miss silently becomes another option), and a mistake prints
one error line and where the help is, not the whole usage block first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class ToolArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without abbreviations, raw description, one-line errors."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs["allow_abbrev"] = False
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: message`` and the help command; exit with status 2 (argparse's)."""
        sys.stderr.write(f"{self.prog}: error: {message}\n(all options: {self.prog} --help)\n")
        sys.exit(2)
