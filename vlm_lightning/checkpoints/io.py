"""Crash-safe checkpoint writes and up-front validation of checkpoint files.

``AtomicCheckpointIO`` streams each checkpoint to ``<path>.tmp-<pid>``, flushes it to disk and renames
it over ``<path>`` with ``os.replace``: a run killed while writing leaves the previous checkpoint
untouched (plus a stray ``.tmp-<pid>`` file, never a truncated ``last.ckpt``). Unlike Lightning's
default writer it does not hold a second, in-memory copy of the checkpoint while writing.

``validate_checkpoint`` checks a file before a run depends on it: missing, truncated or corrupt files,
files that are not Lightning checkpoints, checkpoints written by another program and checkpoints
that need pickled objects outside ``torch.load(weights_only=True)``'s allow-list all raise
``CheckpointError`` with a message that says which of these it is.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from vlm_lightning.errors import UserError
from vlm_lightning.models.peft_setup import LoraSettings

LIGHTNING_KEYS = ("state_dict", "global_step", "pytorch-lightning_version")
OUR_KEY = "vlm_lightning"
SHARDED_META = "meta.pt"  # Lightning's metadata file in a sharded checkpoint folder


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, damaged, foreign or unsafe to load; the message says which."""


def allow_vlm_lightning_types() -> None:
    """Add the plain data classes our checkpoints may hold (hyper-parameters) to torch's safe globals.

    ``save_hyperparameters`` keeps ``LoraSettings`` (a dataclass) in ``hyper_parameters``; without this,
    ``torch.load(weights_only=True)`` (torch's default since 2.6, used by ``fit --ckpt_path``) refuses
    checkpoints of runs that set any ``model.lora.*`` option.
    """
    torch.serialization.add_safe_globals([LoraSettings])


def _is_local(path: _PATH) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: _PATH) -> Path:
    """``torch.save`` to ``<path>.tmp-<pid>``, fsync, then ``os.replace`` onto ``path``; returns ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return target


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and whose loads are validated first.

    Remote (fsspec) paths fall back to Lightning's own transactional writer. ``load_checkpoint``
    raises ``CheckpointError`` (clear text) instead of an unpickling traceback for damaged, foreign
    or unsafe files.

    Args:
        validate_on_load: run ``validate_checkpoint`` before loading a local file.
        require_ours: also refuse Lightning checkpoints not written by vlm_lightning.
    """

    def __init__(self, validate_on_load: bool = True, require_ours: bool = True) -> None:
        super().__init__()
        self.validate_on_load = validate_on_load
        self.require_ours = require_ours
        allow_vlm_lightning_types()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local files) or through Lightning (remote)."""
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Validate a local checkpoint (``weights_only=True``), then load it as Lightning does."""
        if _is_local(path) and is_sharded_checkpoint(path):  # one process: the shards put together
            return validate_checkpoint(path, require_ours=self.require_ours)
        if self.validate_on_load and _is_local(path) and weights_only is not False:
            validate_checkpoint(path, require_ours=self.require_ours)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _describe_unpickling(exc: BaseException) -> str:
    text = str(exc)
    marker = "Unsupported global:"
    if marker in text:
        line = text[text.index(marker) :].splitlines()[0]
        return f"it holds a pickled object outside the weights_only allow-list ({line.strip()})"
    return f"it cannot be unpickled safely ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"


def is_sharded_checkpoint(path: _PATH) -> bool:
    """Whether ``path`` is a folder of FSDP2 shards (torch distributed checkpoint + Lightning's ``meta.pt``)."""
    folder = Path(path)
    return folder.is_dir() and (folder / ".metadata").is_file() and (folder / SHARDED_META).is_file()


def _sharded_metadata(folder: Path) -> dict[str, Any]:
    """Lightning's metadata of a sharded checkpoint folder (everything but the weights and optimizer state)."""
    try:
        meta = torch.load(folder / SHARDED_META, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"sharded checkpoint {folder} is incomplete or corrupt: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{folder} is not a sharded Lightning checkpoint ({SHARDED_META} holds no dict)"
        )
    return meta


def consolidated_checkpoint(folder: _PATH) -> dict[str, Any]:
    """A sharded checkpoint folder as one Lightning checkpoint dict, read in this process.

    Only the trained weights are read, whole (``state_dict``): the sharded optimizer state stays on disk
    (resume a sharded run with ``--trainer.strategy fsdp``, any number of processes). Empty tensors shaped
    from the folder's metadata are filled by torch's own reader (``dcp.load`` without a process group).
    """
    folder = Path(folder)
    meta = _sharded_metadata(folder)
    try:
        reader = FileSystemReader(folder)
        prefix = "state_dict."
        template = {
            key[len(prefix) :]: torch.empty(tuple(item.size), dtype=item.properties.dtype)
            for key, item in reader.read_metadata().state_dict_metadata.items()
            if key.startswith(prefix) and isinstance(item, TensorStorageMetadata)
        }
        if not template:
            raise CheckpointError(
                f"{folder} is not a sharded Lightning checkpoint (no state_dict in its shards)"
            )
        weights = {"state_dict": template}
        dcp.load(weights, storage_reader=reader, no_dist=True)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"sharded checkpoint {folder} is incomplete or corrupt: {type(exc).__name__}: {exc}"
        ) from None
    meta["state_dict"] = weights["state_dict"]
    meta.setdefault("optimizer_states", [])
    return meta


def validate_checkpoint(path: _PATH, require_ours: bool = True, weights: bool = True) -> dict[str, Any]:
    """Check that ``path`` is a complete, safe Lightning checkpoint written by vlm_lightning.

    Loads with ``torch.load(weights_only=True, mmap=True, map_location="cpu")`` (tensors stay on disk),
    so pickled code is never executed. Returns the loaded (memory-mapped) dict; raises
    ``CheckpointError`` naming the problem: missing, empty, truncated/corrupt, unsafe pickle, not a
    Lightning checkpoint, or (``require_ours``) not written by vlm_lightning. A sharded folder is put
    together in this process; ``weights=False`` reads only its metadata (settings, step) and skips that.
    """
    allow_vlm_lightning_types()
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint not found: {file}")
    if is_sharded_checkpoint(file):
        ckpt = consolidated_checkpoint(file) if weights else _sharded_metadata(file)
        if require_ours and OUR_KEY not in ckpt:
            raise CheckpointError(f"sharded checkpoint {file} was not written by vlm_lightning")
        return ckpt
    if not file.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {file}")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {file} is empty (0 bytes): the run was probably killed while writing it"
        )
    if not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"checkpoint {file} ({size} bytes) is truncated or corrupt: it is not a complete torch.save archive "
            "(a run killed while writing, or an interrupted copy); use the previous checkpoint"
        )
    try:
        ckpt = torch.load(file, weights_only=True, mmap=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing checkpoint {file}: {_describe_unpickling(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {file} ({size} bytes) is truncated or corrupt: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(ckpt, dict) or not all(key in ckpt for key in LIGHTNING_KEYS):
        kind = type(ckpt).__name__
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else []
        raise CheckpointError(
            f"{file} is not a Lightning checkpoint (a {kind}"
            + (f" with keys {keys}" if keys else "")
            + f"; expected keys {list(LIGHTNING_KEYS)}): pass a last.ckpt / best.ckpt written by a fit run"
        )
    if require_ours and OUR_KEY not in ckpt:
        raise CheckpointError(
            f"{file} is a Lightning checkpoint but was not written by vlm_lightning (no '{OUR_KEY}' entry): "
            "it cannot be resumed here"
        )
    return ckpt


__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "allow_vlm_lightning_types",
    "atomic_torch_save",
    "validate_checkpoint",
]
