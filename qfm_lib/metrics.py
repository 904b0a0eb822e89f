"""IQA metrics in one place, with one convention.

Convention (VQEG, as in the NR-IQA literature): PLCC and RMSE are computed after mapping the
predictions through the monotonic 4-parameter logistic

    f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2

fitted by least squares (scipy.optimize.curve_fit, on z-scored predictions, two starts) to MOS. `plcc_raw` is the
Pearson correlation without the mapping. SRCC and KRCC (tau-b) are rank measures and need none.

Degenerate input: NaN or infinite values raise ValueError naming the first bad index; fewer than
3 pairs raise ValueError; constant predictions (or constant MOS) make every correlation undefined,
returned as NaN, with RMSE against the MOS mean. When the logistic fit fails to converge, the
linear least-squares map is used instead and `mapping` says so.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    z = np.clip(-(x - b3) / (np.abs(b4) + 1e-12), -50, 50)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic(pred: np.ndarray, mos: np.ndarray) -> tuple[np.ndarray, str]:
    """Map predictions onto the MOS scale: (mapped predictions, 'logistic4' or 'linear')."""
    z = (pred - pred.mean()) / (pred.std() or 1.0)  # fit on standardised predictions: well conditioned
    best, best_sse = None, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b4 in (1.0, 0.25):  # two starts: the fit is not convex
            try:
                params, _ = optimize.curve_fit(logistic4, z, mos, p0=[mos.max(), mos.min(), 0.0, b4],
                                               maxfev=20000)
            except (RuntimeError, optimize.OptimizeWarning):
                continue
            mapped = logistic4(z, *params)
            sse = float(np.sum((mapped - mos) ** 2))
            if np.all(np.isfinite(mapped)) and sse < best_sse:
                best, best_sse = mapped, sse
    if best is not None:
        return best, "logistic4"
    slope, intercept = np.polyfit(pred, mos, 1)
    return slope * pred + intercept, "linear"


def _check(pred, mos) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=float).ravel()
    mos = np.asarray(mos, dtype=float).ravel()
    if pred.shape != mos.shape:
        raise ValueError(f"predictions ({pred.size}) and MOS ({mos.size}) differ in length")
    for label, arr in (("prediction", pred), ("MOS", mos)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{label} at index {bad[0]} is {arr[bad[0]]} ({bad.size} non-finite values)")
    if pred.size < 3:
        raise ValueError(f"need at least 3 predictions to correlate, got {pred.size}")
    return pred, mos


def iqa_metrics(pred, mos) -> dict[str, float | str]:
    """PLCC (after 4-parameter logistic), raw PLCC, SRCC, KRCC, RMSE (after the mapping)."""
    pred, mos = _check(pred, mos)
    if np.ptp(pred) == 0 or np.ptp(mos) == 0:
        nan = float("nan")
        return {"plcc": nan, "srcc": nan, "krcc": nan, "plcc_raw": nan,
                "rmse": float(np.sqrt(np.mean((mos - mos.mean()) ** 2))), "mapping": "constant"}
    mapped, how = fit_logistic(pred, mos)
    plcc = stats.pearsonr(mapped, mos)[0] if np.ptp(mapped) > 0 else float("nan")
    return {"plcc": float(plcc), "srcc": float(stats.spearmanr(pred, mos)[0]),
            "krcc": float(stats.kendalltau(pred, mos)[0]), "plcc_raw": float(stats.pearsonr(pred, mos)[0]),
            "rmse": float(np.sqrt(np.mean((mapped - mos) ** 2))), "mapping": how}


def plcc(pred, mos) -> float:
    return float(iqa_metrics(pred, mos)["plcc"])


def srcc(pred, mos) -> float:
    pred, mos = _check(pred, mos)
    return float(stats.spearmanr(pred, mos)[0]) if np.ptp(pred) and np.ptp(mos) else float("nan")


def selection_score(pred, mos) -> float:
    """What model selection maximises on validation data: (SRCC + raw PLCC) / 2, no fitting."""
    pred, mos = _check(pred, mos)
    if np.ptp(pred) == 0:
        return -1.0
    return float((stats.spearmanr(pred, mos)[0] + stats.pearsonr(pred, mos)[0]) / 2)
