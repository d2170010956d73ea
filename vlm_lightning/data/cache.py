"""On-disk cache of preprocessed images and token lengths, keyed by the source and every setting.

Entries are written to a temporary file and renamed into place, so several dataloader workers or DDP
ranks writing the same entry never leave a partial file (they write identical bytes; the last rename wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from PIL import Image


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (paths are hashed with their size and mtime)."""
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, (str, Path)) and Path(part).is_file():
            stat = Path(part).stat()
            part = [str(part), stat.st_size, stat.st_mtime_ns]
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class PreprocessCache:
    """Images and JSON values stored under ``root/<kind>/<key[:2]>/<key>``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def _write(self, path: Path, write: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        write(tmp)
        os.replace(tmp, path)

    def get_image(self, key: str) -> Image.Image | None:
        """The cached image, or None."""
        path = self._path("images", key, ".png")
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        with Image.open(path) as im:
            return im.convert("RGB")

    def put_image(self, key: str, image: Image.Image) -> None:
        """Store an image (PNG, lossless)."""
        self._write(self._path("images", key, ".png"), lambda p: image.save(p, format="PNG"))

    def get_json(self, key: str) -> Any:
        """The cached value, or None."""
        path = self._path("json", key, ".json")
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(path.read_text())

    def put_json(self, key: str, value: Any) -> None:
        """Store a JSON value."""
        self._write(self._path("json", key, ".json"), lambda p: p.write_text(json.dumps(value)))

    def clear(self) -> None:
        """Remove every entry."""
        shutil.rmtree(self.root, ignore_errors=True)
