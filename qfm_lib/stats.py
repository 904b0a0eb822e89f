"""Paired comparisons of variants over overlapping train/test splits.

The protocol scores every variant on the same 10 seeded random 80/20 splits. Any two test parts
share about a fifth of their images and the training parts far more, so the per-split scores are
not independent: a plain paired t-test (or Wilcoxon test) over splits treats 10 correlated numbers
as 10 independent ones and is overconfident. The corrected resampled t-test of Nadeau and Bengio
(Machine Learning 52:239-281, 2003) inflates the variance of the mean difference from s²/J to

    (1/J + n_test/n_train) * s²

where J is the number of splits, s² the sample variance (ddof=1) of the per-split differences,
n_train the number of images the model was fitted and selected with (the train + val parts of a
split: both are seen before testing) and n_test the size of the test part. The statistic has a t
distribution with J - 1 degrees of freedom. p-values across one table's comparisons (all variants
x metrics) are Holm-adjusted. The Wilcoxon signed-rank p-value is reported as a secondary,
uncorrected number only.

A results table has one row per (variant, split) and a column per metric (plcc, srcc, krcc, rmse).
Differences are always variant minus baseline; for rmse lower is better (see HIGHER_IS_BETTER).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

HIGHER_IS_BETTER = {"plcc": True, "srcc": True, "krcc": True, "plcc_raw": True, "rmse": False}

COMPARE_COLUMNS = ["variant", "baseline", "metric", "n_splits", "median_diff", "mean_diff",
                   "ci_low", "ci_high", "p_corrected", "p_holm", "p_wilcoxon"]


def _corrected_se(d: np.ndarray, n_train: int, n_test: int) -> float:
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    return float(np.sqrt((1 / d.size + n_test / n_train) * d.var(ddof=1)))


def corrected_resampled_ttest(diffs: Sequence[float], n_train: int, n_test: int) -> tuple[float, float]:
    """Nadeau-Bengio corrected resampled t-test of mean(diffs) = 0: (t, two-sided p), df = J - 1.

    Zero variance: all differences 0 gives (0, 1); all equal and non-zero gives (±inf, 0).
    Fewer than 2 differences gives (nan, nan). NaN differences propagate to NaN.
    """
    d = np.asarray(diffs, dtype=float).ravel()
    if d.size < 2 or np.isnan(d).any():
        return float("nan"), float("nan")
    mean, se = d.mean(), _corrected_se(d, n_train, n_test)
    if se == 0:
        return (0.0, 1.0) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0)
    t = mean / se
    return float(t), float(2 * stats.t.sf(abs(t), d.size - 1))


def corrected_ci(diffs: Sequence[float], n_train: int, n_test: int,
                 level: float = 0.95) -> tuple[float, float]:
    """The t-interval for the mean difference matching corrected_resampled_ttest.

    mean ± t_{(1+level)/2, J-1} * sqrt((1/J + n_test/n_train) * s²); (nan, nan) for J < 2.
    """
    d = np.asarray(diffs, dtype=float).ravel()
    if d.size < 2 or np.isnan(d).any():
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, d.size - 1) * _corrected_se(d, n_train, n_test)
    return float(d.mean() - half), float(d.mean() + half)


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels); NaN entries stay NaN and do not count."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Wilcoxon signed-rank p of paired differences (secondary: it ignores the splits' overlap);
    NaN with fewer than 5 differences or when all are zero."""
    d = np.asarray(diffs, dtype=float)
    return float(stats.wilcoxon(d).pvalue) if len(d) >= 5 and (d != 0).any() else float("nan")


def split_sizes(splits_df: pd.DataFrame, split: int = 0) -> tuple[int, int]:
    """(n_train, n_test) of one split of a split table (image, split_0..split_9 of train/val/test).

    n_train counts the train and val parts (the model is fitted on one and selected on the other,
    so both shape it); n_test counts the test part.
    """
    part = splits_df[f"split_{split}"]
    return int(part.isin(["train", "val"]).sum()), int((part == "test").sum())


def per_split_differences(results: pd.DataFrame, variant: str, baseline: str, metric: str) -> pd.Series:
    """variant minus baseline on `metric`, paired by split (inner join), indexed by split.

    Splits where either score is NaN are dropped. Duplicate (variant, split) rows raise ValueError.
    """
    def scores(name: str) -> pd.Series:
        rows = results[results["variant"] == name]
        if rows["split"].duplicated().any():
            raise ValueError(f"variant {name!r} has more than one row for a split")
        return rows.set_index("split")[metric]

    a, b = scores(variant), scores(baseline)
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna().sort_index()
    return (both["a"] - both["b"]).rename(f"{metric}_diff")


def compare(results: pd.DataFrame, baseline: str, variants: Sequence[str] | None = None,
            metrics: Sequence[str] = ("plcc", "srcc"), *, n_train: int, n_test: int,
            level: float = 0.95) -> pd.DataFrame:
    """One row per (variant != baseline, metric): the paired comparison with the baseline.

    Columns: variant, baseline, metric, n_splits, median_diff, mean_diff, ci_low, ci_high (the
    corrected `level` interval for the mean difference), p_corrected (Nadeau-Bengio),
    p_holm (Holm over every row of this table), p_wilcoxon (secondary, uncorrected for the
    overlap; NaN with fewer than 5 splits or all differences zero).
    """
    known = list(dict.fromkeys(results["variant"]))
    variants = known if variants is None else list(variants)
    missing = [v for v in [baseline, *variants] if v not in known]
    if missing:
        raise ValueError(f"{missing} not in the results (variants: {known})")
    rows = []
    for variant in (v for v in variants if v != baseline):
        for metric in metrics:
            d = per_split_differences(results, variant, baseline, metric)
            ci_low, ci_high = corrected_ci(d, n_train, n_test, level)
            rows.append({"variant": variant, "baseline": baseline, "metric": metric,
                         "n_splits": len(d), "median_diff": float(d.median()) if len(d) else np.nan,
                         "mean_diff": float(d.mean()) if len(d) else np.nan,
                         "ci_low": ci_low, "ci_high": ci_high,
                         "p_corrected": corrected_resampled_ttest(d, n_train, n_test)[1],
                         "p_wilcoxon": wilcoxon_p(d)})
    table = pd.DataFrame(rows, columns=[c for c in COMPARE_COLUMNS if c != "p_holm"])
    table.insert(COMPARE_COLUMNS.index("p_holm"), "p_holm", holm(table["p_corrected"]))
    return table
