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

from vlm_lightning.cli.commands import DESCRIPTION, PROG, TRAINER_COMMANDS, usage

_UNRECOGNIZED = re.compile(r"unrecognized arguments: --([\w.]+)")
_REQUIRED = re.compile(r"Parser key \"([\w.]+)\":\s*Expected a <class '\w+'>\. Got value: None")
_NOT_ACCEPTED = re.compile(
    r"Parser key \"([\w.]+)\".*?class_path '([\w.]+)'.*?Option '(\w+)' is not accepted", re.S
)
# a value of the wrong type inside a dataclass or class group: the outer key, the inner key, the type, the value
_NESTED_WRONG_TYPE = re.compile(
    r"Parser key \"([\w.]+)\":.*?Parser key \"(\w+)\":\s*Expected a <class '(\w+)'>\. Got value: ([^\n]*)",
    re.S,
)
_NOT_IN_COMMAND = re.compile(r"Subcommand '\w+' does not accept option '([\w.]+)'")  # a key of a config file
_YAML_BOOLEAN = re.compile(
    r"Parser key \"([\w.]+)\":\s*Expected a typing\.Literal\[([^\]]*)\]\. Got value: (True|False)"
)


def _class_parameters(class_path: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of ``package.module.Class`` (empty when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return {}
    return {n: p for n, p in inspect.signature(cls).parameters.items() if n not in ("self", "args", "kwargs")}


def _described(parameter: inspect.Parameter) -> str:
    """``name: type = default`` as the signature reads (string annotations unquoted)."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        text = parameter.name
    else:
        kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        text = f"{parameter.name}: {kind}"
    return text if parameter.default is inspect.Parameter.empty else f"{text} = {parameter.default!r}"


class ConciseArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors are one message plus the valid keys of the group."""

    _given_args: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As jsonargparse's, without argparse's prefix matching: ``--data.batch 2`` is an unknown key, never
        silently ``data.batch_size``."""
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        """As jsonargparse's; remembers the arguments, so that an error names its command's help."""
        self._given_args = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, *rest, **kwargs)

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
            parameters = _class_parameters(class_path)
            valid = list(parameters)
            message = f"option '{wrong}' is not accepted by --{group}"
            if wrong in parameters:  # a known option whose value failed its type check
                message = (
                    f"--{group}.{wrong}: the value given is not valid for {class_path.rpartition('.')[2]}'s "
                    f"argument {_described(parameters[wrong])}"
                )
                valid = []
        elif (match := _NESTED_WRONG_TYPE.search(message)) and match.group(4) != "None":
            outer, inner, kind, value = match.groups()
            message = f"--{outer}.{inner} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r}"
        elif match := _REQUIRED.search(message):
            example = " (a hub id such as Qwen/Qwen2-VL-2B-Instruct, or a local model folder)"
            message = f"--{match.group(1)} is required" + (
                example if match.group(1) == "model.name_or_path" else ""
            )
        elif match := _UNRECOGNIZED.search(message) or _NOT_IN_COMMAND.search(message):
            dotted = match.group(1)
            group, _, wrong = dotted.rpartition(".")
            valid = self.group_keys(group) if group else []
            message = message.splitlines()[0]
        elif match := _YAML_BOOLEAN.search(message):
            key, choices, value = match.groups()
            message = (
                f"{key} must be one of {choices}, got the boolean {value}: YAML reads an unquoted off / on / "
                f'no / yes as a boolean; quote the word in the config (e.g. {key.rpartition(".")[2]}: "off")'
            )
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
        command = next((a for a in (self._given_args or []) if a in TRAINER_COMMANDS), None)
        if parser is self and command and prog == PROG:  # a check of the whole config: the command's help
            prog = f"{PROG} {command}"
        given = self._given_args or []
        configs = [b for a, b in zip(given, given[1:]) if a in ("--config", "-c")]
        configs += [a.partition("=")[2] for a in given if a.startswith("--config=")]
        where = f" (config: {', '.join(configs)})" if configs and _NOT_IN_COMMAND.search(message) else ""
        first, newline, rest = parser.concise_message(message).partition("\n")
        sys.stderr.write(f"{PROG}: error: {first}{where}{newline}{rest}\n")
        sys.stderr.write(f"  all options: {prog} --help\n")
        self.exit(2)


def parser_kwargs() -> dict[str, Any]:
    """Keyword arguments for LightningCLI's main parser (its help lists every command)."""
    return {"prog": PROG, "description": DESCRIPTION, "epilog": usage()}


__all__ = ["ConciseArgumentParser", "PROG", "parser_kwargs"]
