"""Solutions to the exercises of notebooks/01_feature_distance_vs_quality_gap.ipynb, on a 60-image
subset (run from the repository root with QFM_DATA_ROOT set). Each returns a checkable dict."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist, squareform

sys.path.insert(0, str(Path(__file__).parent))
from _small import small_study  # noqa: E402

from qfm_lib import analysis  # noqa: E402
from qfm_lib.features import FeatureSpec, extract_features  # noqa: E402


def _nn_gap(x: np.ndarray, mos: np.ndarray) -> float:
    nn = analysis.nearest_neighbours(x)
    return float(np.abs(mos - mos[nn]).mean())


def solution_1() -> dict:
    """Worst neighbours in 'stem' vs 'head': the mean nearest-neighbour gap per stage (stem neighbours share
    low-level statistics, not content)."""
    s = small_study()
    return {st: round(_nn_gap(analysis.stage_matrix(s.features, st), s.mos), 2) for st in ("stem", "head")}


def solution_2() -> dict:
    """Downscaled to 224 px: k-NN validation SRCC per stage, native vs resized."""
    s = small_study()
    resized = extract_features(s.table, FeatureSpec(resize=224), progress=False)
    out = {}
    for label, feats in (("native", s.features), ("resize224", resized)):
        t = analysis.knn_quality_by_stage(feats, s.mos, s.splits, k=5, n_splits=2, stages=["block2", "head"])
        out[label] = t.groupby("stage")["val_srcc"].median().round(3).to_dict()
    return out


def solution_3() -> dict:
    """Cosine instead of Euclidean distance: nearest-neighbour gap on all stages."""
    s = small_study()
    x = analysis.stage_matrix(s.features, "all")
    d = squareform(pdist(x, "cosine"))
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(1)
    return {"euclidean": round(_nn_gap(x, s.mos), 2), "cosine": round(float(np.abs(s.mos - s.mos[nn]).mean()), 2)}


def solution_4() -> dict:
    """k-NN validation SRCC against k for the best stage (highest median validation SRCC at k=10 over three
    splits, as in the notebook's table); k is capped at the training part's size (37 images on split 0 of this subset)."""
    s = small_study()
    at_10 = analysis.knn_quality_by_stage(s.features, s.mos, s.splits, k=10, n_splits=3)
    best = at_10.groupby("stage")["val_srcc"].median().idxmax()
    out = {"best_stage": best}
    for k in (1, 5, 10, 25, 50):
        t = analysis.knn_quality_by_stage(s.features, s.mos, s.splits, k=k, n_splits=3, stages=[best])
        out[k] = round(float(t["val_srcc"].median()), 3)
    return out


if __name__ == "__main__":
    for fn in (solution_1, solution_2, solution_3, solution_4):
        print(fn.__name__, fn())
