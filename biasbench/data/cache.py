"""Decoded data sets cached as one tensor file, keyed on the source files and the decoding settings.

The key hashes every source file's relative path, size and modification time plus the settings
(image size, resize mode, format version): touching, adding or removing a file, or changing the
settings, gives a new key, so a stale cache is never read. The cache lives in
`<root>/.biasbench_cache/`, or, when the root is read-only, in `$BIASBENCH_CACHE_DIR` (default
`~/.cache/biasbench/data/<hash of the root path>/`). Writes are atomic; older caches of the same
data set and settings are removed when a new one is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from biasbench.fsutil import atomic_write

FORMAT_VERSION = 1
CACHE_FOLDER = ".biasbench_cache"


def fingerprint(files: list[Path], base: Path, settings: dict[str, Any]) -> str:
    """Hex key from (relative path, size, mtime) of every file, in order, plus the settings."""
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _writable(folder: Path) -> bool:
    probe = folder if folder.exists() else folder.parent
    return os.access(probe, os.W_OK | os.X_OK)


def cache_folder(root: Path, override: str | None = None) -> Path:
    """Beside the data when the root is writable, else a per-user cache folder."""
    if override:
        return Path(override).expanduser()
    local = root / CACHE_FOLDER
    if _writable(local):
        return local
    env = os.environ.get("BIASBENCH_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "biasbench" / "data"
    return base / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def cache_path(folder: Path, stem: str, key: str) -> Path:
    return folder / f"{stem}-{key}.pt"


def load(path: Path) -> dict[str, Any] | None:
    """The cached tensors, or None when there is no usable cache file."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is rebuilt, never fatal
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == FORMAT_VERSION else None


def save(path: Path, obj: dict[str, Any]) -> Path | None:
    """Write atomically and drop older caches with the same stem; None when nothing could be written."""
    try:
        atomic_write(path, lambda f: torch.save({"format": FORMAT_VERSION, **obj}, f))
    except Exception:  # no space, permissions: run on without a cache
        return None
    stem = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{stem}-*.pt"):
        if old != path and old.name.rsplit("-", 1)[0] == stem:
            old.unlink(missing_ok=True)
    return path
