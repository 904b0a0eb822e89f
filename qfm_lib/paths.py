"""Where things live: project root, data root, cache, figures, build folder."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPLITS_DIR = PROJECT_ROOT / "data" / "splits"
FIGURES_DIR = PROJECT_ROOT / "figures"
BUILD_DIR = PROJECT_ROOT / "build"


def data_root() -> Path:
    """The data root: $QFM_DATA_ROOT if set, else ./data in the project."""
    env = os.environ.get("QFM_DATA_ROOT")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "data"


def cache_dir() -> Path:
    """Feature/model cache: $QFM_CACHE_DIR if set, else ./.cache in the project (git-ignored)."""
    env = os.environ.get("QFM_CACHE_DIR")
    path = Path(env).expanduser().resolve() if env else PROJECT_ROOT / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
