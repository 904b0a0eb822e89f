"""Notebook 01's measurements: how backbone feature distance relates to the quality gap.

Features of each stage are z-scored per column over the images analysed, and distances are
Euclidean divided by sqrt(dimension), so stages of different width are comparable. "all" joins
every stage with equal weight.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import pdist, squareform
from sklearn.neighbors import KNeighborsRegressor

from .features import Features
from .metrics import iqa_metrics
from .splits import split_parts


def zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def stage_matrix(feats: Features, stage: str, view: str = "full") -> np.ndarray:
    """Z-scored, width-normalised features of one stage, or of all stages joined ('all')."""
    if stage == "all":
        return np.hstack([stage_matrix(feats, s, view) for s in feats.stage_names]) / np.sqrt(len(feats.stage_names))
    x = zscore(feats.stage(stage, view=view))
    return x / np.sqrt(x.shape[1])


def pair_table(x: np.ndarray, mos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Condensed pairwise feature distance and |ΔMOS| over all pairs (scipy pdist order)."""
    return pdist(x), pdist(mos[:, None], "cityblock")


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    d = squareform(pdist(x))
    np.fill_diagonal(d, np.inf)
    return d.argmin(1)


def stage_summary(feats: Features, mos: np.ndarray, mos_std: np.ndarray, seed: int = 0,
                  stages: list[str] | None = None) -> pd.DataFrame:
    """Per stage: Spearman(distance, |ΔMOS|), nearest-neighbour vs random-pair gap, share of
    nearest neighbours whose gap exceeds the anchor image's rater standard deviation."""
    rng = np.random.default_rng(seed)
    n = len(mos)
    partner = (np.arange(n) + rng.integers(1, n, n)) % n  # a random other image for each image
    random_gap = np.abs(mos - mos[partner])
    rows = []
    for stage in stages or [*feats.stage_names, "all"]:
        x = stage_matrix(feats, stage)
        dist, gap = pair_table(x, mos)
        nn_gap = np.abs(mos - mos[nearest_neighbours(x)])
        rows.append({"stage": stage, "dim": x.shape[1],
                     "spearman_dist_gap": stats.spearmanr(dist, gap)[0],
                     "nn_gap_mean": nn_gap.mean(), "nn_gap_median": np.median(nn_gap),
                     "random_gap_mean": random_gap.mean(),
                     "nn_gap_over_random": nn_gap.mean() / random_gap.mean(),
                     "share_nn_gap_gt_std": float(np.mean(nn_gap > mos_std))})
    return pd.DataFrame(rows)


def knn_quality_by_stage(feats: Features, mos: np.ndarray, split_table: pd.DataFrame, k: int = 10,
                         n_splits: int = 10, stages: list[str] | None = None) -> pd.DataFrame:
    """How much quality each stage carries: a k-NN regressor fitted on each split's train part,
    scored on its validation part (the test part is never touched). One row per stage x split."""
    rows = []
    for stage in stages or [*feats.stage_names, "all"]:
        x_all = feats.full if stage == "all" else feats.stage(stage)
        for i in range(n_splits):
            parts = split_parts(split_table, i)
            tr, va = parts["train"], parts["val"]
            mu, sd = x_all[tr].mean(0), x_all[tr].std(0)
            z = (x_all - mu) / np.where(sd > 0, sd, 1.0)  # standardised with training statistics only
            model = KNeighborsRegressor(n_neighbors=min(k, len(tr)), weights="distance").fit(z[tr], mos[tr])
            m = iqa_metrics(model.predict(z[va]), mos[va])
            rows.append({"stage": stage, "split": i, "val_srcc": m["srcc"], "val_plcc": m["plcc"]})
    return pd.DataFrame(rows)
