"""Solutions to the exercises of notebooks/00_nr_iqa_primer.ipynb (run: python solutions/00_nr_iqa_primer.py,
with QFM_DATA_ROOT set). Each solution_N() returns a dict that can be checked; all run in seconds."""
from __future__ import annotations

import numpy as np
from scipy import stats

from qfm_lib import stats as S
from qfm_lib.data import load_dataset
from qfm_lib.metrics import iqa_metrics
from qfm_lib.splits import load_splits, make_splits

SEED = 0


def _mos():
    table = load_dataset("livec")
    return table, table["mos"].to_numpy(float), table["mos_std"].to_numpy(float)


def solution_1() -> dict:
    """Noise level of the toy predictor exp((MOS + noise) / 15), as in the notebook: every metric drops as noise
    grows; RMSE is on the MOS scale (after the logistic map), so only RMSE can be compared with the rater std."""
    _, mos, _ = _mos()
    rng = np.random.default_rng(SEED)
    out = {}
    for sd in (5.0, 20.0):
        pred = np.exp((mos + rng.normal(0, sd, len(mos))) / 15)
        m = iqa_metrics(pred, mos)
        out[sd] = {k: round(float(m[k]), 3) for k in ("srcc", "plcc", "rmse")}
    assert out[20.0]["srcc"] < out[5.0]["srcc"]
    return out


def solution_2() -> dict:
    """A non-monotone map: SRCC and KRCC collapse, and the (monotone) logistic cannot rescue PLCC."""
    _, mos, _ = _mos()
    rng = np.random.default_rng(SEED)
    pred = np.sin((mos + rng.normal(0, 10, len(mos))) / 20)
    m = iqa_metrics(pred, mos)
    return {k: round(float(m[k]), 3) for k in ("srcc", "krcc", "plcc_raw", "plcc")}


def solution_3() -> dict:
    """A single random rater (MOS + N(0, mos_std)) orders a share of pairs differently from the MOS; KRCC of
    that rater = 1 - 2 * discordant share. Compare with the toy's KRCC."""
    _, mos, sd = _mos()
    rng = np.random.default_rng(SEED)
    rater = mos + rng.normal(0, sd)
    tau = stats.kendalltau(rater, mos)[0]
    toy = stats.kendalltau(np.exp((mos + rng.normal(0, 10, len(mos))) / 20), mos)[0]
    return {"one_rater_krcc": round(float(tau), 3), "discordant_share": round(float((1 - tau) / 2), 3),
            "toy_krcc": round(float(toy), 3)}


def solution_4() -> dict:
    """The null simulation of the notebook on the first 5 splits: each predictor is drawn once over all images
    (so overlapping test parts share its errors, which is what makes the naive paired t-test overconfident),
    its SRCC difference taken on each split's test part. Under the null (equal noise) the naive test rejects
    well above 5 %, the corrected one near it; swapping n_train/n_test in the correction (ratio 4 instead of
    1/4) makes the correction far larger and the test too strict. Power: give predictor a 20 % less noise."""
    table, mos, _ = _mos()
    splits = load_splits("livec", list(table["image"]))
    n_train, n_test = S.split_sizes(splits)
    tests = [(splits[f"split_{s}"] == "test").to_numpy() for s in range(5)]
    rng = np.random.default_rng(SEED)
    sims, sd = 200, 12.0  # the notebook's noise
    out = {}
    for case, sd_a in (("null", sd), ("a_less_noisy", 0.8 * sd)):
        rejects = {"naive": 0, "corrected": 0, "swapped": 0}
        for _ in range(sims):
            a, b = mos + rng.normal(0, sd_a, len(mos)), mos + rng.normal(0, sd, len(mos))
            diffs = [stats.spearmanr(a[t], mos[t])[0] - stats.spearmanr(b[t], mos[t])[0] for t in tests]
            rejects["naive"] += stats.ttest_1samp(diffs, 0).pvalue < 0.05
            rejects["corrected"] += S.corrected_resampled_ttest(diffs, n_train, n_test)[1] < 0.05
            rejects["swapped"] += S.corrected_resampled_ttest(diffs, n_test, n_train)[1] < 0.05
        out[case] = {k: float(v / sims) for k, v in rejects.items()}
    return out


def solution_5() -> dict:
    """Grouped splits for 20 references x 10 distortions: whole references move together, so two test parts
    share whole groups of 10 images (the overlap comes in steps of 10)."""
    images = [f"r{r:02d}_d{d}" for r in range(20) for d in range(10)]
    groups = [i[:3] for i in images]
    splits = make_splits(images, groups=groups)
    tests = [set(splits.loc[splits[f"split_{s}"] == "test", "image"]) for s in range(10)]
    overlaps = [len(tests[i] & tests[j]) for i in range(10) for j in range(i + 1, 10)]
    assert all(o % 10 == 0 for o in overlaps)
    return {"test_size": len(tests[0]), "mean_overlap": float(np.mean(overlaps))}


if __name__ == "__main__":
    for fn in (solution_1, solution_2, solution_3, solution_4, solution_5):
        print(fn.__name__, fn())
