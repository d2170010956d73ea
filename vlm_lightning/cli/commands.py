"""The one command table of ``python -m vlm_lightning <command>``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (``vlm_lightning.cli.lightning_cli``); the tools
below run their own parsers. ``python -m vlm_lightning.deploy.export`` and the other module forms keep working.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

PROG = "python -m vlm_lightning"
DESCRIPTION = "Fine-tune vision-language models on documents."

#: command -> (module with ``main(argv)``, one-line description)
TOOLS: dict[str, tuple[str, str]] = {
    "export": ("vlm_lightning.deploy.export", "write a PEFT adapter / merged model folder from a checkpoint"),
    "infer": (
        "vlm_lightning.deploy.inference",
        "generate for images with a base model, adapter or checkpoint",
    ),
    "compare": ("vlm_lightning.evaluation.compare", "baseline vs fine-tuned test metrics on the same split"),
    "tiny": ("vlm_lightning.replicas.__main__", "build an offline tiny replica of a model family"),
    "synthetic": ("vlm_lightning.data.synthetic.__main__", "generate synthetic documents (receipts, ...)"),
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
#: trainer command -> one-line description (the top-level help; each command's own ``--help`` is LightningCLI's)
TRAINER_HELP = {
    "fit": "train (and validate) a model; --ckpt_path resumes a run",
    "validate": "one evaluation pass over data.val",
    "test": "evaluate a checkpoint on data.test and write predictions and metrics",
    "predict": "generate answers for data.predict",
}


def usage() -> str:
    """The command list shown by ``python -m vlm_lightning --help`` (one paragraph: the formatter wraps it)."""
    tools = "; ".join(f"{name}: {text}" for name, (_, text) in TOOLS.items())
    return (
        f"Trainer commands: {', '.join(TRAINER_COMMANDS)} (python -m vlm_lightning fit --help). "
        f"Tools (python -m vlm_lightning <tool> --help): {tools}."
    )


def top_level_help() -> str:
    """``python -m vlm_lightning --help`` without importing the trainer (torch, Lightning: seconds).

    Each command's ``--help`` (LightningCLI's) lists its own settings, ``--config`` and ``--print_config``.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=f"{DESCRIPTION} Settings go after the command: {PROG} fit --config C.yaml "
        "[--data.batch_size 8 ...]; --print_config after them prints the resolved configuration.",
    )
    commands = parser.add_subparsers(
        title="commands",
        metavar="{" + ",".join([*TRAINER_COMMANDS, *TOOLS]) + "}",
        description="add --help after a command",
    )
    for name in TRAINER_COMMANDS:
        commands.add_parser(name, help=TRAINER_HELP[name])
    for name, (_, text) in TOOLS.items():
        commands.add_parser(name, help=f"tool: {text}")
    return parser.format_help()


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch to a tool, or to LightningCLI for the trainer commands."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        sys.stdout.write(top_level_help())
        raise SystemExit(0)
    if args and args[0] in TOOLS:
        module, _ = TOOLS[args[0]]
        sys.argv[0] = f"python -m vlm_lightning {args[0]}"  # the tool's usage line names this command
        result = importlib.import_module(module).main(args[1:])
        raise SystemExit(result if isinstance(result, int) else 0)
    from vlm_lightning.cli.lightning_cli import main as trainer_main  # lazy: --help stays free of torch

    trainer_main(None if argv is None else args)  # None: LightningCLI reads sys.argv itself


__all__ = ["DESCRIPTION", "PROG", "TOOLS", "TRAINER_COMMANDS", "main", "top_level_help", "usage"]
