"""Opening one split as a ``datasets.Dataset``: hub name, ``save_to_disk`` folder, data files or image folder.

Hub datasets fail fast (a few seconds at most) when the hub cannot be reached; local datasets also tell
where their relative image paths are read from (:func:`local_root`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlm_lightning.errors import SettingError, UserError

HUB_TIMEOUT_S = 5.0
PACKAGED_BUILDERS = ("parquet", "arrow", "json", "csv", "text", "imagefolder")
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}

DataFiles = str | Sequence[str] | Mapping[str, str | Sequence[str]]


class HubUnreachableError(UserError, ConnectionError):
    """A hub dataset was asked for but the Hugging Face hub cannot be reached."""


def _hub_offline() -> bool:
    import datasets.config  # heavy: datasets adds ~0.5 s to CLI start
    from huggingface_hub import constants  # hub path only

    return bool(datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE)


def _check_hub(path: str) -> None:
    """Fail fast (a few seconds at most) when the hub cannot be reached or has no such dataset."""
    from huggingface_hub import HfApi, constants  # online path: hub API
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError  # online path

    hint = (
        "(There is no local file or folder of that name either.) Download it where the hub is reachable "
        "(save_to_disk or parquet) and point 'path' at the copy."
    )
    if _hub_offline():
        return  # load_dataset may still find it in the local cache; its failure is reworded below
    try:
        HfApi(endpoint=constants.ENDPOINT).dataset_info(path, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return
    except RepositoryNotFoundError as exc:
        raise FileNotFoundError(
            f"dataset '{path}' is neither a local path nor a dataset on the Hugging Face hub "
            f"(or it is private: log in with `hf auth login`)"
        ) from exc
    except HfHubHTTPError:
        return  # the hub answered; let load_dataset report the details
    except Exception as exc:
        raise HubUnreachableError(
            f"dataset '{path}': the Hugging Face hub ({constants.ENDPOINT}) is unreachable "
            f"({type(exc).__name__}: {exc}). {hint} If it is in your local cache, set HF_HUB_OFFLINE=1."
        ) from exc


def _load_hub(path: str, name: str | None, split: str, data_files: Any) -> Any:
    from datasets import load_dataset  # heavy: datasets

    _check_hub(path)
    try:
        return load_dataset(path, name, split=split, data_files=data_files)
    except ConnectionError as exc:
        if not _hub_offline():
            raise
        raise HubUnreachableError(
            f"dataset '{path}' is not in the local cache and the Hugging Face hub is unreachable "
            f"(offline mode: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set), and there is no local file or "
            f"folder of that name. Download it where the hub is reachable (save_to_disk or parquet) and "
            f"point 'path' at the copy."
        ) from exc


def _pick_split(data: Any, split: str, path: str) -> Any:
    from datasets import DatasetDict  # heavy: datasets

    if not isinstance(data, DatasetDict):
        return data
    if split not in data:
        raise SettingError(f"dataset '{path}' has no split '{split}'; its splits are: {', '.join(data)}")
    return data[split]


def _builder_for(file: str) -> str:
    suffix = Path(file).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise SettingError(
            f"cannot tell the format of data file '{file}' (known: {', '.join(FILE_BUILDERS)})"
        )
    return FILE_BUILDERS[suffix]


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def open_dataset(
    path: str, *, name: str | None = None, split: str = "train", data_files: DataFiles | None = None
) -> Any:
    """Open one split as a ``datasets.Dataset``: hub, saved folder, data files or image folder."""
    from datasets import load_dataset, load_from_disk  # heavy: datasets

    files = data_files if data_files is None or isinstance(data_files, Mapping) else {split: data_files}
    local = Path(path).expanduser()
    if path in PACKAGED_BUILDERS:
        if files is None:
            raise SettingError(
                f"dataset path '{path}' is a file format: give data_files (or use a folder path)"
            )
        return load_dataset(path, name, data_files=files, split=split)
    if local.is_dir() and files is None and _is_saved_dataset(local):
        return _pick_split(load_from_disk(str(local)), split, path)
    if local.is_file():
        return load_dataset(_builder_for(str(local)), data_files={split: str(local)}, split=split)
    if local.is_dir():
        return load_dataset(str(local), name, data_files=files, split=split)
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"dataset path not found: {path}")
    return _load_hub(path, name, split, files)


def local_root(path: str, data_files: DataFiles | None) -> Path | None:
    """The folder relative image paths of a local dataset are read from: the data file's folder (or the
    dataset folder); None for hub datasets (their paths, if any, stay as given)."""
    local = Path(path).expanduser()
    if local.is_file():
        return local.parent
    if local.is_dir():
        return local
    files = list(data_files.values()) if isinstance(data_files, Mapping) else data_files
    first = files[0] if isinstance(files, (list, tuple)) and files else files
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    if isinstance(first, (str, Path)) and Path(first).expanduser().is_file():
        return Path(first).expanduser().parent
    return None
