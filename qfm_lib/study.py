"""One call that every notebook starts with: the dataset table, its cached features, its splits."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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
