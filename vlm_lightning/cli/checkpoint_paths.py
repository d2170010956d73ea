"""``--ckpt_path last`` / ``best``: the newest run's file under ``trainer.default_root_dir``, said on stderr.

Lightning resolves these words in the new run's own folder (a new ``version_N``): it finds nothing, then
``fit`` trains from step 0 and ``test`` evaluates the base model, each with a warning only. Here ``fit
--ckpt_path last`` (a requeued job's command) resumes the newest ``version_*/last.ckpt`` or says it starts a
new run; an evaluation takes the newest ``last.ckpt`` / ``best.ckpt`` or stops with what to give, and an
evaluation without ``--ckpt_path`` says that it scores the base model.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from vlm_lightning.checkpoints.settings import newest_checkpoint
from vlm_lightning.errors import SettingError


def _setting(section: Any, group: str, key: str) -> Any:
    """``section.group.key`` of a jsonargparse Namespace (or dict), None where a level is missing."""
    value = section.get(group)
    return value.get(key) if value is not None else None


def _search(section: Any, name: str) -> tuple[Any, str]:
    """The newest ``name`` under the section's run root (or ``checkpoint.dirpath``), and where it looked."""
    root = _setting(section, "trainer", "default_root_dir") or os.getcwd()
    dirpath = _setting(section, "checkpoint", "dirpath")
    return newest_checkpoint(root, dirpath, name), dirpath or f"{root}/version_*"


def resume_last(fit: Any) -> str | None:
    """``fit --ckpt_path last``: the newest ``last.ckpt`` (set in ``fit``'s config), or None for a new run."""
    found, where = _search(fit, "last.ckpt")
    if found is None:
        print(f"[vlm_lightning] --ckpt_path last: no last.ckpt in {where} yet: a new run", file=sys.stderr)
        fit["ckpt_path"] = None
        return None
    print(f"[vlm_lightning] --ckpt_path last: resuming {found}", file=sys.stderr)
    fit["ckpt_path"] = str(found)
    return str(found)


def evaluated_checkpoint(subcommand: str, section: Any) -> str | None:
    """The checkpoint ``validate`` / ``test`` / ``predict`` loads (``last`` / ``best`` resolved and set in the
    section), or None: the base model, said on stderr."""
    ckpt_path = section.get("ckpt_path")
    if ckpt_path in ("last", "best"):
        found, where = _search(section, f"{ckpt_path}.ckpt")
        if found is None:
            raise SettingError(
                f"--ckpt_path {ckpt_path}: no {ckpt_path}.ckpt in {where}: give the checkpoint file "
                f"(--ckpt_path RUN/{ckpt_path}.ckpt), or the run's root as --trainer.default_root_dir"
            )
        print(f"[vlm_lightning] --ckpt_path {ckpt_path}: {subcommand} {found}", file=sys.stderr)
        section["ckpt_path"] = ckpt_path = str(found)
    elif not ckpt_path:
        name = _setting(section, "model", "name_or_path")
        print(
            f"[vlm_lightning] {subcommand} without --ckpt_path: the base model {name} as loaded, no fine-tuned "
            "weights (--ckpt_path RUN/best.ckpt evaluates a run)",
            file=sys.stderr,
        )
    return ckpt_path


__all__ = ["evaluated_checkpoint", "resume_last"]
