"""The evaluation protocol in code: fit each variant on a split's training part, select its
settings on the validation part, score the test part once. Results are one row per variant x split."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .baselines import fit_ridge, fit_svr
from .metrics import iqa_metrics, selection_score
from .models import TrainConfig, train_model
from .splits import split_parts

QFM_VARIANTS = {
    "mlp": TrainConfig(gated=False),
    "gated": TrainConfig(gated=True),
    "gated+matching": TrainConfig(gated=True, matching_weight=1.0),
    "gated+matching+contrastive": TrainConfig(gated=True, matching_weight=1.0, contrastive_weight=0.5),
    "matching (no gate)": TrainConfig(gated=False, matching_weight=1.0),
}
MATCHING_EPS_GRID = (0.25, 0.5)
ALL_VARIANTS = ["brisque+svr", "ridge", *QFM_VARIANTS, "teacher (ridge on crops)", "gated+matching+distillation"]


def fit_qfm(x_tr, y_tr, x_va, y_va, cfg: TrainConfig, **extra):
    """Train one QFM config; when matching is on, choose eps on validation."""
    grid = MATCHING_EPS_GRID if cfg.matching_weight else (cfg.matching_eps,)
    runs = [train_model(x_tr, y_tr, x_va, y_va, replace(cfg, matching_eps=eps), **extra) for eps in grid]
    best = max(runs, key=lambda r: selection_score(r.predict(x_va), y_va))
    return best


def teacher_labels(crops: np.ndarray, y: np.ndarray, parts: dict, n_views: int) -> tuple:
    """Teacher: ridge on crop features (each crop labelled with its image's MOS), alpha chosen on
    validation crops averaged per image; it labels n_views crops of each training image."""
    tr, va = parts["train"], parts["val"]
    k = crops.shape[1]
    predict, _ = fit_ridge(crops[tr].reshape(-1, crops.shape[2]), np.repeat(y[tr], k),
                           crops[va].reshape(-1, crops.shape[2]), np.repeat(y[va], k))
    views = crops[tr, :n_views].reshape(-1, crops.shape[2])
    return views, predict(views), predict


def run_split(x: np.ndarray, y: np.ndarray, splits: pd.DataFrame, split: int, variants: list[str],
              brisque: np.ndarray | None = None, crops: np.ndarray | None = None, n_views: int = 5,
              distill_base: str = "gated+matching", seed: int = 0) -> list[dict]:
    parts = split_parts(splits, split)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    rows, trained = [], {}
    for variant in variants:
        info = {}
        if variant == "brisque+svr":
            predict, info = fit_svr(brisque[tr], y[tr], brisque[va], y[va])
            score = lambda rows: predict(brisque[rows])  # noqa: E731
        elif variant == "ridge":
            predict, info = fit_ridge(x[tr], y[tr], x[va], y[va])
            score = lambda rows: predict(x[rows])  # noqa: E731
        elif variant == "teacher (ridge on crops)":
            _, _, predict = teacher_labels(crops, y, parts, n_views)
            score = lambda rows: predict(crops[rows].reshape(-1, crops.shape[2])).reshape(len(rows), -1).mean(1)  # noqa: E731
        elif variant.endswith("+distillation") or variant in QFM_VARIANTS:
            extra = {}
            if variant.endswith("+distillation"):
                x_extra, y_extra, _ = teacher_labels(crops, y, parts, n_views)
                extra = {"x_extra": x_extra, "y_extra": y_extra}
            cfg = QFM_VARIANTS[distill_base if variant.endswith("+distillation") else variant]
            model = fit_qfm(x[tr], y[tr], x[va], y[va], replace(cfg, seed=seed), **extra)
            info = {"best_epoch": model.best_epoch, "eps": model.config.matching_eps}
            score = lambda rows, m=model: m.predict(x[rows])  # noqa: E731
        else:
            raise ValueError(f"unknown variant {variant!r}")
        metrics = iqa_metrics(score(te), y[te])  # the test part, scored once, after all selection
        rows.append({"variant": variant, "split": split, **{k: metrics[k] for k in ("plcc", "srcc", "krcc", "rmse")},
                     "val_score": selection_score(score(va), y[va]), "settings": str(info)})
    return rows


def run_protocol(x, y, splits, variants, n_splits: int = 10, progress: bool = True, **kwargs) -> pd.DataFrame:
    rows = []
    for i in tqdm(range(n_splits), desc="splits", disable=not progress):
        rows += run_split(x, y, splits, i, variants, **kwargs)
    return pd.DataFrame(rows)


def cached_protocol(key: dict, compute) -> pd.DataFrame:
    """Results of `compute()` cached as CSV under <cache>/results/, keyed by a hash of `key`
    (features cache entries, variants, configs, splits, code version), written atomically."""
    import hashlib
    import json
    import os
    import tempfile

    from . import __version__
    from .paths import cache_dir

    digest = hashlib.sha256(json.dumps({**key, "qfm_lib": __version__}, sort_keys=True, default=str).encode())
    path = cache_dir() / "results" / f"{digest.hexdigest()[:24]}.csv"
    if path.is_file():
        print(f"results from cache {path.name}")
        return pd.read_csv(path)
    table = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        table.to_csv(fh, index=False)
    os.replace(tmp, path)
    return table


def summarise(results: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Median and IQR over splits per variant, and a paired Wilcoxon test of SRCC/PLCC vs baseline."""
    from scipy.stats import wilcoxon

    out = []
    base = results[results.variant == baseline].set_index("split")
    for variant, group in results.groupby("variant", sort=False):
        row = {"variant": variant, "n_splits": len(group)}
        for m in ("plcc", "srcc", "krcc", "rmse"):
            row[f"{m}_median"] = group[m].median()
            row[f"{m}_iqr"] = group[m].quantile(0.75) - group[m].quantile(0.25)
        g = group.set_index("split")
        for m in ("plcc", "srcc"):
            diff = (g[m] - base[m].reindex(g.index)).dropna()
            row[f"{m}_vs_{baseline}_p"] = (float(wilcoxon(diff).pvalue) if variant != baseline and len(diff) >= 5
                                           and np.any(diff != 0) else np.nan)
        out.append(row)
    return pd.DataFrame(out)
