"""Solutions to the exercises of notebooks/07_distortion_lab.ipynb, on a small lab (3 references of a
60-image LIVEC subset, levels 1, 3, 5). Scorers are trained on split 0's training part, chosen on its
validation part; the references come from its test part, as in the notebook."""
from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _small import BACKBONE, SEED, small_study  # noqa: E402

from qfm_lib import distortions as D  # noqa: E402
from qfm_lib import protocol  # noqa: E402
from qfm_lib.baselines import fit_ridge  # noqa: E402
from qfm_lib.data import load_dataset  # noqa: E402
from qfm_lib.features import FeatureSpec, extract_features  # noqa: E402
from qfm_lib.models import train_model  # noqa: E402
from qfm_lib.splits import split_parts  # noqa: E402

LEVELS = [1, 3, 5]


@functools.lru_cache(maxsize=None)
def lab(distortions: tuple[str, ...] = ("jpeg", "blur", "noise"), resize: int | None = None):
    s = small_study()
    parts = split_parts(s.splits, 0)
    root, name = D.make_distorted_dataset(s.table.iloc[parts["test"]], 3, list(distortions), LEVELS, SEED)
    table = load_dataset(name, root=root)
    return s, parts, table, extract_features(table, FeatureSpec(backbone=BACKBONE, resize=resize), progress=False)


def _median_srcc(table, scores) -> dict:
    w = D.within_reference_srcc(table, np.asarray(scores, float))
    return w.groupby("dist_type")["srcc"].median().round(2).to_dict()


def solution_1() -> dict:
    """The pooled gated+matching student as a scorer, beside ridge."""
    s, parts, table, feats = lab()
    tr, va = parts["train"], parts["val"]
    x = s.features.full
    ridge, _ = fit_ridge(x[tr], s.mos[tr], x[va], s.mos[va])
    student = train_model(x[tr], s.mos[tr], x[va], s.mos[va], replace(protocol.VARIANTS["gated+matching"].config, seed=SEED))
    return {"ridge": _median_srcc(table, ridge(feats.full)), "gated+matching": _median_srcc(table, student.predict(feats.full))}


def solution_2() -> dict:
    """Ridge on one stage at a time."""
    s, parts, table, feats = lab()
    tr, va = parts["train"], parts["val"]
    out = {}
    for stage in ("block2", "head"):
        x = s.features.stage(stage)
        ridge, _ = fit_ridge(x[tr], s.mos[tr], x[va], s.mos[va])
        out[stage] = _median_srcc(table, ridge(feats.stage(stage)))
    return out


def solution_3() -> dict:
    """Over- and under-exposure by the same stops: is ridge's response symmetric?"""
    s, parts, table, feats = lab(("exposure", "underexposure"))
    tr, va = parts["train"], parts["val"]
    ridge, _ = fit_ridge(s.features.full[tr], s.mos[tr], s.features.full[va], s.mos[va])
    return _median_srcc(table, ridge(feats.full))


def solution_4() -> dict:
    """Downscaled to 224 px (both LIVEC and the lab): which distortions does downscaling hide?"""
    s, parts, table, feats = lab(resize=224)
    livec = extract_features(s.table, FeatureSpec(backbone=BACKBONE, resize=224), progress=False)
    tr, va = parts["train"], parts["val"]
    ridge, _ = fit_ridge(livec.full[tr], s.mos[tr], livec.full[va], s.mos[va])
    return _median_srcc(table, ridge(feats.full))


if __name__ == "__main__":
    for fn in (solution_1, solution_2, solution_3, solution_4):
        print(fn.__name__, fn())
