"""The command-line parser: jsonargparse's errors in one short message, under ``python -m vlm_lightning``.

jsonargparse prints the whole usage (about 110 lines) before an unknown or malformed option. Here an
error prints only the message, the valid keys of the group the option belongs to (with the closest
match), and where to find the full help.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from typing import Any, NoReturn

from jsonargparse._common import debug_mode_active  # jsonargparse's own switch: raise instead of exit
from lightning.pytorch.cli import LightningArgumentParser

from vlm_lightning.cli.commands import DESCRIPTION, PROG, usage

_UNRECOGNIZED = re.compile(r"unrecognized arguments: --([\w.]+)")
_NOT_ACCEPTED = re.compile(
    r"Parser key \"([\w.]+)\".*?class_path '([\w.]+)'.*?Option '(\w+)' is not accepted", re.S
)


def _class_options(class_path: str) -> list[str]:
    """The constructor parameters of ``package.module.Class`` (empty when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]


class ConciseArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors are one message plus the valid keys of the group."""

    def group_keys(self, group: str) -> list[str]:
        """The option names directly under ``group`` (``model.lora`` -> ``r``, ``alpha``, ...)."""
        prefix = f"{group}."
        names = {a.dest[len(prefix) :].split(".")[0] for a in self._actions if a.dest.startswith(prefix)}
        return sorted(n for n in names if n)

    def concise_message(self, message: str) -> str:
        """``message`` cut to its cause, with the group's valid keys and the closest one."""
        group, wrong, valid = None, None, []
        if match := _NOT_ACCEPTED.search(message):
            group, class_path, wrong = match.groups()
            valid = _class_options(class_path)
            message = f"option '{wrong}' is not accepted by --{group}"
        elif match := _UNRECOGNIZED.search(message):
            dotted = match.group(1)
            group, _, wrong = dotted.rpartition(".")
            valid = self.group_keys(group) if group else []
            message = message.splitlines()[0]
        else:
            lines = [line for line in message.splitlines() if line.strip()]
            message = "\n".join(lines[:8]) + ("\n  ..." if len(lines) > 8 else "")
        if valid:
            close = difflib.get_close_matches(wrong or "", valid, n=1)
            hint = f" (did you mean {group}.{close[0]}?)" if close else ""
            message += f"{hint}\n  valid keys of {group}: {', '.join(valid)}"
        return message

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{PROG}: error: {parser.concise_message(message)}\n")
        sys.stderr.write(f"  all options: {prog} --help\n")
        self.exit(2)


def parser_kwargs() -> dict[str, Any]:
    """Keyword arguments for LightningCLI's main parser (its help lists every command)."""
    return {"prog": PROG, "description": DESCRIPTION, "epilog": usage()}


__all__ = ["ConciseArgumentParser", "PROG", "parser_kwargs"]
