"""On-disk cache helpers: keys hashed from what a result depends on, files written atomically
(temp file in the same folder, then os.replace) so an interrupted run never leaves a corrupt entry."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .paths import cache_dir


def digest(key: Any, extra: bytes = b"") -> str:
    """A 24-hex-digit hash of a JSON-able key (non-JSON values by str) plus optional raw bytes."""
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    h.update(extra)
    return h.hexdigest()[:24]


def cache_path(kind: str, key: Any, suffix: str, extra: bytes = b"") -> Path:
    """<cache>/<kind>/<digest(key)><suffix>, the folder created."""
    folder = cache_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{digest(key, extra)}{suffix}"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call write(fh) on a temp file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
