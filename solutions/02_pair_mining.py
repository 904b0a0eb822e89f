"""Solutions to the exercises of notebooks/02_pair_mining.ipynb, on a 60-image subset."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist

sys.path.insert(0, str(Path(__file__).parent))
from _small import small_study  # noqa: E402

from qfm_lib import analysis, pairs  # noqa: E402
from qfm_lib import protocol  # noqa: E402
from qfm_lib.qfm_iqm import matching_partners  # noqa: E402
from qfm_lib.splits import split_parts  # noqa: E402


def _names(s):
    return list(s.table["image"])


def solution_1() -> dict:
    """Halving gap_low: fewer similar-quality / different-semantics pairs, covering less of the MOS range."""
    s = small_study()
    x = analysis.stage_matrix(s.features, "all")
    out = {}
    for gap_low in (0.05, 0.025):
        m = pairs.mine_pairs(x, s.mos, _names(s), gap_low=gap_low)
        sq = m[m.kind == pairs.KINDS[0]]
        out[gap_low] = {"pairs": len(sq), "mos_span": round(float(np.ptp(np.r_[sq.mos_a, sq.mos_b])) if len(sq) else 0.0, 1)}
    assert out[0.025]["pairs"] <= out[0.05]["pairs"]
    return out


def solution_2() -> dict:
    """Semantics from the head stage only: the similar-semantics pairs mined in each space, their median
    distance in the head space (the classifier's embedding; relative to all pairs' median there, so 1 = a
    typical pair) and how many pairs the two rules share. Lower = closer in what the classifier sees. On this
    60-image subset the notebook's 5 % quantiles leave almost no pairs, so 20 % / 80 % here."""
    s = small_study()
    head_dist = pdist(analysis.stage_matrix(s.features, "head"))
    typical = np.median(head_dist)
    n = len(s.mos)
    out, found = {}, {}
    for stage in ("all", "head"):
        m = pairs.mine_pairs(analysis.stage_matrix(s.features, stage), s.mos, _names(s), dist_low=0.2, gap_high=0.8)
        sem = m[m.kind == pairs.KINDS[1]]
        found[stage] = set(zip(sem.i, sem.j))
        condensed = n * sem.i - sem.i * (sem.i + 1) // 2 + (sem.j - sem.i - 1)  # pdist's index of (i, j), i < j
        out[stage] = {"pairs": len(sem),
                      "median_head_distance": round(float(np.median(head_dist[condensed]) / typical), 3) if len(sem) else None}
    out["shared_pairs"] = len(found["all"] & found["head"])
    return out


def solution_3() -> dict:
    """Easy pairs: close in features AND close in quality (both at or below their 10 % quantiles)."""
    s = small_study()
    dist, gap = analysis.pair_table(analysis.stage_matrix(s.features, "all"), s.mos)
    easy = (dist <= np.quantile(dist, 0.1)) & (gap <= np.quantile(gap, 0.1))
    return {"easy_share": round(float(easy.mean()), 4), "independent_expectation": 0.01}


def solution_4() -> dict:
    """dist_quantile 0.9 instead of 0.8: fewer training partners per split."""
    s = small_study()
    cfg = protocol.VARIANTS["qfm-iqm (gate+adversarial matching)"].config
    train = split_parts(s.splits, 0)["train"]
    count = lambda c: sum(len(p) for p in matching_partners(s.features.full, s.mos, train, c).values()) // 2  # noqa: E731
    return {"dist_quantile_0.8": count(cfg), "dist_quantile_0.9": count(replace(cfg, dist_quantile=0.9))}


if __name__ == "__main__":
    for fn in (solution_1, solution_2, solution_3, solution_4):
        print(fn.__name__, fn())
