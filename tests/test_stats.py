"""qfm_lib.stats against values computed by hand."""
import math

import numpy as np
import pandas as pd
import pytest

from qfm_lib import stats as S

DIFFS = [0.01, 0.02, 0.03, 0.00, 0.04]


def test_corrected_ttest_by_hand():
    # J = 5, mean = 0.02; deviations -0.01, 0, 0.01, -0.02, 0.02 -> squares sum 0.001
    # s^2 = 0.001 / 4 = 2.5e-4; correction 1/5 + 200/800 = 0.45; se^2 = 0.45 * 2.5e-4 = 1.125e-4
    # t = 0.02 / sqrt(1.125e-4) = 0.02 / (0.0075 * sqrt(2)) = 4 * sqrt(2) / 3 = 1.885618...
    t, p = S.corrected_resampled_ttest(DIFFS, n_train=800, n_test=200)
    assert t == pytest.approx(4 * math.sqrt(2) / 3, rel=1e-12)
    # Student t with 4 df in closed form: F(t) = 1/2 + 3/8 * t/sqrt(x) * (1 - t^2 / (12 x)), x = 1 + t^2/4
    # t^2 = 32/9, x = 17/9
    x = 17 / 9
    cdf = 0.5 + 3 / 8 * t / math.sqrt(x) * (1 - (32 / 9) / (12 * x))
    assert p == pytest.approx(2 * (1 - cdf), rel=1e-10)
    assert p == pytest.approx(0.13242, abs=1e-5)
    # the naive paired t-test (se^2 = s^2 / J = 5e-5) is overconfident: t = 2.828, p = 0.047
    naive_t = 0.02 / math.sqrt(2.5e-4 / 5)
    assert naive_t == pytest.approx(2 * math.sqrt(2)) and t < naive_t


def test_corrected_ci_by_hand():
    # mean ± t_{0.975, 4} * se, t_{0.975, 4} = 2.7764 (table), se = sqrt(1.125e-4) = 0.0106066
    half = 2.776445 * math.sqrt(1.125e-4)  # 0.0294486
    lo, hi = S.corrected_ci(DIFFS, 800, 200)
    assert (lo, hi) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-7)
    assert lo == pytest.approx(-0.00945, abs=1e-5) and hi == pytest.approx(0.04945, abs=1e-5)
    lo90, hi90 = S.corrected_ci(DIFFS, 800, 200, level=0.90)  # t_{0.95, 4} = 2.1318
    assert (lo90, hi90) == pytest.approx((0.02 - 2.131847 * math.sqrt(1.125e-4),
                                          0.02 + 2.131847 * math.sqrt(1.125e-4)), abs=1e-6)


def test_degenerate_inputs():
    assert S.corrected_resampled_ttest([0.0] * 5, 800, 200) == (0.0, 1.0)
    assert S.corrected_resampled_ttest([0.05] * 5, 800, 200) == (math.inf, 0.0)
    assert S.corrected_resampled_ttest([-0.05] * 5, 800, 200) == (-math.inf, 0.0)
    assert S.corrected_ci([0.05] * 5, 800, 200) == (0.05, 0.05)
    assert all(math.isnan(v) for v in S.corrected_resampled_ttest([0.1], 800, 200))
    assert all(math.isnan(v) for v in S.corrected_ci([], 800, 200))
    with pytest.raises(ValueError):
        S.corrected_resampled_ttest(DIFFS, 0, 200)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08, 0.20; running max -> 0.04, 0.09, 0.09, 0.20
    assert S.holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    out = S.holm([0.01, float("nan"), 0.02])  # NaN does not count: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def _results(base, **variants):
    rows = [{"variant": "base", "split": i, "plcc": v, "srcc": v - 0.01} for i, v in enumerate(base)]
    for name, vals in variants.items():
        rows += [{"variant": name, "split": i, "plcc": v, "srcc": v - 0.01} for i, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_split_sizes_and_pairing():
    splits = pd.DataFrame({"image": list("abcdefghij"),
                           "split_0": ["train"] * 6 + ["val"] * 2 + ["test"] * 2,
                           "split_1": ["test"] * 3 + ["train"] * 7})
    assert S.split_sizes(splits) == (8, 2) and S.split_sizes(splits, 1) == (7, 3)
    base = [0.80, 0.81, 0.82, 0.79, 0.80]
    res = _results(base, v=np.add(base, DIFFS))
    res = res[~((res.variant == "v") & (res.split == 4))]  # v lacks split 4: paired on 0..3 only
    d = S.per_split_differences(res, "v", "base", "plcc")
    assert list(d.index) == [0, 1, 2, 3] and d.to_numpy() == pytest.approx(DIFFS[:4])
    with pytest.raises(ValueError, match="more than one row"):
        S.per_split_differences(pd.concat([res, res]), "v", "base", "plcc")


def test_compare_by_hand():
    base = [0.80, 0.81, 0.82, 0.79, 0.80]
    res = _results(base, v=np.add(base, DIFFS), w=np.subtract(base, DIFFS))
    table = S.compare(res, "base", n_train=800, n_test=200)
    assert list(table.columns) == S.COMPARE_COLUMNS
    assert list(zip(table.variant, table.metric)) == [("v", "plcc"), ("v", "srcc"), ("w", "plcc"), ("w", "srcc")]
    v = table.iloc[0]
    assert v.n_splits == 5 and v.median_diff == pytest.approx(0.02) and v.mean_diff == pytest.approx(0.02)
    assert v.p_corrected == pytest.approx(0.13242, abs=1e-5)
    assert (v.ci_low, v.ci_high) == pytest.approx((-0.00945, 0.04945), abs=1e-5)
    # Holm over the 4 rows, all p = 0.13242: smallest times 4 = 0.5297, then running max
    assert table.p_holm.to_numpy() == pytest.approx([4 * 0.132419] * 4, abs=1e-5)
    assert table.loc[2, "mean_diff"] == pytest.approx(-0.02)
    # Wilcoxon, exact: the one zero difference is dropped; 4 positive ranks -> two-sided p = 2/2^4
    assert v.p_wilcoxon == pytest.approx(2 / 16)
    with pytest.raises(ValueError, match="not in the results"):
        S.compare(res, "nope", n_train=800, n_test=200)


def test_compare_wilcoxon_and_holm_rules():
    base = list(np.linspace(0.75, 0.85, 10))
    res = _results(base, big=np.add(base, 0.05 + np.arange(10) / 1000), same=base)
    table = S.compare(res, "base", metrics=("plcc",), n_train=800, n_test=200)
    big, same = table.iloc[0], table.iloc[1]
    assert big.p_wilcoxon == pytest.approx(2 / 2 ** 10)  # all 10 differences positive, exact
    assert math.isnan(same.p_wilcoxon) and same.p_corrected == 1.0
    assert table.p_holm.to_numpy() == pytest.approx(S.holm(table.p_corrected))
    few = S.compare(res[res.split < 4], "base", metrics=("plcc",), n_train=800, n_test=200)
    assert few.p_wilcoxon.isna().all()  # fewer than 5 splits


def test_split_boxplots_draw_the_same_figure_every_run_and_leave_numpy_s_generator_alone():
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qfm_lib.plots import split_boxplots

    rng = np.random.default_rng(0)
    results = pd.DataFrame({"variant": np.repeat(["a", "b"], 10), "split": np.tile(np.arange(10), 2),
                            "plcc": rng.uniform(0.8, 0.9, 20), "srcc": rng.uniform(0.8, 0.9, 20)})

    def png() -> bytes:
        fig = split_boxplots(results, "{metric}", figsize=(6, 2))
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return buf.getvalue()

    np.random.seed(123)
    first = png()
    after = np.random.random()
    np.random.seed(123)
    np.random.random()  # a caller's draws in between do not change the dots
    assert png() == first
    np.random.seed(123)
    assert np.random.random() == after  # the global generator continues as if no figure was drawn


def test_validation_vs_test_draws_one_line_per_variant_from_its_validation_to_its_test_rank():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qfm_lib.plots import validation_vs_test

    scores = pd.DataFrame({"val_score": [0.85, 0.84, 0.80], "test_score": [0.83, 0.86, 0.81],
                           "val_rank": [1, 2, 3], "test_rank": [2, 1, 3]}, index=["a", "b", "c"])
    fig = validation_vs_test(scores, "t", highlight="a")
    lines = fig.axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [[1, 2], [2, 1], [3, 3]]
    assert lines[0].get_color() == "tab:red" and lines[1].get_color() == "0.45"
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "a  0.850" in labels and "0.860  b" in labels
    plt.close(fig)
