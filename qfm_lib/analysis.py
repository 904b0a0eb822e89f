"""Measurements of notebooks 01 and 03: how feature distance relates to the quality gap, and what
a channel gate keeps.

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


def column_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation, a zero deviation replaced by 1 (constant columns)."""
    sd = x.std(0)
    return x.mean(0), np.where(sd > 0, sd, 1.0)


def zscore(x: np.ndarray) -> np.ndarray:
    mean, sd = column_stats(x)
    return (x - mean) / sd


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


def distance_quality_stats(x: np.ndarray, mos: np.ndarray, mos_std: np.ndarray, seed: int = 0) -> dict:
    """For one feature matrix (rows = images, already scaled as wanted): Spearman(distance, |ΔMOS|)
    over all pairs, the nearest neighbour's quality gap against a random other image's, and the
    share of images whose nearest neighbour differs by more than the image's rater std."""
    rng = np.random.default_rng(seed)
    n = len(mos)
    partner = (np.arange(n) + rng.integers(1, n, n)) % n  # a random other image for each image
    random_gap = np.abs(mos - mos[partner])
    dist, gap = pair_table(x, mos)
    nn_gap = np.abs(mos - mos[nearest_neighbours(x)])
    return {"dim": x.shape[1], "spearman_dist_gap": stats.spearmanr(dist, gap)[0],
            "nn_gap_mean": nn_gap.mean(), "nn_gap_median": np.median(nn_gap),
            "random_gap_mean": random_gap.mean(), "nn_gap_over_random": nn_gap.mean() / random_gap.mean(),
            "share_nn_gap_gt_std": float(np.mean(nn_gap > mos_std))}


def stage_summary(feats: Features, mos: np.ndarray, mos_std: np.ndarray, seed: int = 0,
                  stages: list[str] | None = None) -> pd.DataFrame:
    """distance_quality_stats per stage (and all stages joined)."""
    return pd.DataFrame([{"stage": stage, **distance_quality_stats(stage_matrix(feats, stage), mos, mos_std, seed)}
                         for stage in stages or [*feats.stage_names, "all"]])


def channel_table(feats: Features) -> pd.DataFrame:
    """One row per feature column: its stage, part (mean/std) and channel index."""
    rows = []
    for stage, c in zip(feats.stage_names, feats.stage_channels):
        rows += [{"stage": stage, "part": part, "channel": i} for part in ("mean", "std") for i in range(c)]
    return pd.DataFrame(rows)


def gate_by_channel(gates: np.ndarray, x: np.ndarray, mos: np.ndarray, feats: Features) -> pd.DataFrame:
    """What a channel gate keeps: per column, the mean gate value over images (gates (N, D) from
    Trained.gate_values) beside |Spearman(column, MOS)| on the same images."""
    table = channel_table(feats)
    table["gate_mean"] = gates.mean(0)
    table["abs_srcc_with_mos"] = np.abs(column_spearman(x, mos))
    return table


def column_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of every column of x with y (0 for constant columns)."""
    rx = stats.rankdata(x, axis=0)
    rx -= rx.mean(0)
    ry = stats.rankdata(y) - (len(y) + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = rx.T @ ry / (np.linalg.norm(rx, axis=0) * np.linalg.norm(ry))
    return np.nan_to_num(rho)


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
            mu, sd = column_stats(x_all[tr])
            z = (x_all - mu) / sd  # standardised with training statistics only
            model = KNeighborsRegressor(n_neighbors=min(k, len(tr)), weights="distance").fit(z[tr], mos[tr])
            m = iqa_metrics(model.predict(z[va]), mos[va])
            rows.append({"stage": stage, "split": i, "val_srcc": m["srcc"], "val_plcc": m["plcc"]})
    return pd.DataFrame(rows)


def token_gate_table(gates: np.ndarray, image_means: np.ndarray, mos: np.ndarray,
                     token_channels: list[tuple[str, str, int]]) -> pd.DataFrame:
    """What the token decoder's channel gate keeps: per token channel (stage, part, index), the mean
    gate over images (gates (N, C) from TrainedDecoder.gate_values) beside |Spearman| between the
    channel's per-image mean (TokenSet.image_means) and MOS on the same images."""
    table = pd.DataFrame(token_channels, columns=["stage", "part", "channel"])
    table["gate_mean"] = gates.mean(0)
    table["abs_srcc_with_mos"] = np.abs(column_spearman(image_means, mos))
    return table


def gate_preference(table: pd.DataFrame, by: str = "stage") -> pd.DataFrame:
    """Per group (and 'all'): Spearman(gate_mean, abs_srcc_with_mos), mean gate, share below 0.9,
    and the mean gate of the quarter of channels most and least correlated with MOS."""
    def summary(g: pd.DataFrame) -> pd.Series:
        top = g.abs_srcc_with_mos >= g.abs_srcc_with_mos.quantile(0.75)
        low = g.abs_srcc_with_mos <= g.abs_srcc_with_mos.quantile(0.25)
        return pd.Series({"channels": len(g), "gate_mean": g.gate_mean.mean(),
                          "share_below_0.9": (g.gate_mean < 0.9).mean(),
                          "gate_top_quarter": g.gate_mean[top].mean(), "gate_bottom_quarter": g.gate_mean[low].mean(),
                          "spearman_gate_vs_abs_srcc": stats.spearmanr(g.gate_mean, g.abs_srcc_with_mos)[0]})
    rows = [summary(g).rename(name) for name, g in table.groupby(by, sort=False)]
    return pd.DataFrame([*rows, summary(table).rename("all")]).rename_axis(by).reset_index()
