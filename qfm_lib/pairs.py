"""Mining the two kinds of pairs that QFM-IQM is about.

- similar quality / different semantics ("semantic noise"): |ΔMOS| at or below the `gap_low`
  quantile of all pair gaps and feature distance at or above the `dist_high` quantile;
- similar semantics / different quality: distance at or below `dist_low`, gap at or above `gap_high`.

Thresholds are quantiles (0..1) of the pairs' own distributions, so they mean the same on any
dataset. When mining feeds training, pass only training images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .analysis import pair_table

KINDS = ("similar_quality_different_semantics", "similar_semantics_different_quality")


def kind_mask(dist: np.ndarray, gap: np.ndarray, dist_threshold: float, gap_threshold: float,
              kind: str) -> np.ndarray:
    """The pair rule, elementwise on distances and |ΔMOS| of any shape: similar quality / different
    semantics is gap <= gap_threshold and dist >= dist_threshold; the other kind is
    dist <= dist_threshold and gap >= gap_threshold."""
    if kind == KINDS[0]:
        return (gap <= gap_threshold) & (dist >= dist_threshold)
    if kind == KINDS[1]:
        return (dist <= dist_threshold) & (gap >= gap_threshold)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_quantiles(**qs: float) -> None:
    for name, q in qs.items():
        if not 0 <= q <= 1:
            raise ValueError(f"{name} must be a quantile in 0..1, got {q}")


def mine_pairs(x: np.ndarray, mos: np.ndarray, names: list[str], dist_low: float = 0.05,
               dist_high: float = 0.95, gap_low: float = 0.05, gap_high: float = 0.95) -> pd.DataFrame:
    """Both kinds of pairs as a table: image_a, image_b, distance, gap, kind, i, j."""
    _check_quantiles(dist_low=dist_low, dist_high=dist_high, gap_low=gap_low, gap_high=gap_high)
    dist, gap = pair_table(x, mos)
    i, j = np.triu_indices(len(mos), k=1)  # pdist's order
    d_lo, d_hi = np.quantile(dist, [dist_low, dist_high])
    g_lo, g_hi = np.quantile(gap, [gap_low, gap_high])
    masks = {KINDS[0]: kind_mask(dist, gap, d_hi, g_lo, KINDS[0]), KINDS[1]: kind_mask(dist, gap, d_lo, g_hi, KINDS[1])}
    frames = []
    for kind, mask in masks.items():
        frames.append(pd.DataFrame({"image_a": np.asarray(names)[i[mask]], "image_b": np.asarray(names)[j[mask]],
                                    "mos_a": mos[i[mask]], "mos_b": mos[j[mask]], "distance": dist[mask],
                                    "gap": gap[mask], "kind": kind, "i": i[mask], "j": j[mask]}))
    table = pd.concat(frames, ignore_index=True)
    table.attrs.update(thresholds={"distance_low": d_lo, "distance_high": d_hi, "gap_low": g_lo, "gap_high": g_hi})
    return table


def count_grid(x: np.ndarray, mos: np.ndarray, dist_qs: list[float], gap_qs: list[float],
               kind: str = KINDS[0]) -> pd.DataFrame:
    """Pair counts of one kind over a grid of (distance quantile, gap quantile) thresholds."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _check_quantiles(**{f"dist_q{k}": q for k, q in enumerate(dist_qs)}, **{f"gap_q{k}": q for k, q in enumerate(gap_qs)})
    dist, gap = pair_table(x, mos)
    d_thr, g_thr = np.quantile(dist, dist_qs), np.quantile(gap, gap_qs)
    counts = np.zeros((len(dist_qs), len(gap_qs)), dtype=int)
    for a, d in enumerate(d_thr):
        for b, g in enumerate(g_thr):
            counts[a, b] = int(np.sum(kind_mask(dist, gap, d, g, kind)))
    return pd.DataFrame(counts, index=pd.Index(dist_qs, name="distance quantile"),
                        columns=pd.Index(gap_qs, name="gap quantile"))


def mos_coverage(pairs: pd.DataFrame, bins: np.ndarray) -> pd.DataFrame:
    """How many pair endpoints fall in each MOS bin, per kind."""
    rows = {}
    for kind, group in pairs.groupby("kind"):
        values = np.concatenate([group["mos_a"], group["mos_b"]])
        rows[kind] = np.histogram(values, bins=bins)[0]
    labels = [f"{lo:.0f}-{hi:.0f}" for lo, hi in zip(bins[:-1], bins[1:])]
    return pd.DataFrame(rows, index=pd.Index(labels, name="MOS bin"))
