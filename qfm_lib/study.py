"""One call that every notebook starts with: the dataset table, its cached features, its splits; and
a disk cache for a notebook's slow analysis steps."""
from __future__ import annotations

import inspect
import marshal
import pickle
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from .cache import atomic_write, cache_path
from .data import load_dataset
from .features import Features, FeatureSpec, extract_features
from .splits import load_splits


@dataclass
class StudyData:
    table: pd.DataFrame
    features: Features
    splits: pd.DataFrame

    @property
    def mos(self) -> np.ndarray:
        return self.table["mos"].to_numpy(float)

    @property
    def paths(self) -> dict[str, str]:
        return dict(zip(self.table["image"], self.table["path"]))


def load_study_data(dataset: str, backbone: str, n_images: int | None = None, seed: int = 0,
                    n_crops: int = 0, crop_size: int = 224, crop_seed: int = 0) -> StudyData:
    """Canonical table (a seeded subset of n_images when given), features (cached), committed splits."""
    table = load_dataset(dataset, limit=n_images, seed=seed)
    spec = FeatureSpec(backbone=backbone, n_crops=n_crops, crop_size=crop_size, crop_seed=crop_seed)
    feats = extract_features(table, spec)
    splits = load_splits(dataset, list(table["image"]))
    print(f"{dataset}: {len(table)} images, MOS {table['mos'].min():.1f}-{table['mos'].max():.1f}; "
          f"features {feats.full.shape} from {backbone}"
          + (f", crops {feats.crops.shape}" if feats.crops is not None else ""))
    return StudyData(table, feats, splits)


def single_thread() -> None:
    """Run this process's numerics from here on on one thread (BLAS and torch), as the protocol's rows
    are: a notebook's float results then do not depend on the machine's cores, nor on how many notebooks
    the batch runs at once (which sets each kernel's thread count)."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)


def setup_notebook(dataset: str, backbone: str, n_images: int | None = None, seed: int = 0,
                   n_crops: int = 0, n_views: int = 5, brisque: bool = False):
    """The setup every analysis notebook starts with: print versions, set the plot theme, load the
    study data (features and token maps cached) and the protocol's inputs. Returns (study, inputs)."""
    import seaborn as sns

    from . import print_versions
    from .protocol import inputs_from_study

    print_versions()
    sns.set_theme(style="whitegrid", context="notebook")
    study = load_study_data(dataset, backbone, n_images=n_images, seed=seed, n_crops=n_crops)
    return study, inputs_from_study(study, n_views=n_views, seed=seed, brisque=brisque)


T = TypeVar("T")


def cached(kind: str, key: dict, compute: Callable[[], T], extra: bytes = b"") -> T:
    """compute()'s result, computed once per key and kept pickled under <cache>/<kind>/ (written
    atomically), for a notebook's slow analysis steps. `key` (with `extra`, raw bytes such as an
    array's, as in cache.cache_path) must hold everything the result depends on besides compute's own
    source, which is added; e.g. a protocol row key (`protocol.row_key`) covers the library code,
    features, split and seed."""
    try:
        source = inspect.getsource(compute)
    except (OSError, TypeError):  # no source to read: the code object (with its constants) stands for it
        if not hasattr(compute, "__code__"):
            raise TypeError(f"cached: compute must be a function, got {type(compute).__name__} {compute!r}; "
                            f"wrap it, e.g. lambda: compute()") from None
        source = marshal.dumps(compute.__code__).hex()
    path = cache_path(kind, {"key": key, "source": source}, ".pkl", extra)
    if path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    result = compute()
    atomic_write(path, lambda fh: pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL))
    return result
