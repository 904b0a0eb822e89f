import numpy as np
import pytest
from scipy import stats

from qfm_lib.metrics import iqa_metrics, logistic4, selection_score


def test_hand_computed_values():
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    mos = np.array([1.0, 3.0, 2.0, 4.0])
    m = iqa_metrics(pred, mos)
    # Pearson by hand: cov = 1.25/..., r = 0.8; Spearman of these ranks = 0.8; Kendall = (5-1)/6
    assert m["plcc_raw"] == pytest.approx(0.8)
    assert m["srcc"] == pytest.approx(0.8)
    assert m["krcc"] == pytest.approx(4 / 6)


def test_against_scipy_on_random_data():
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, 200)
    pred = mos / 100 + rng.normal(0, 0.2, 200)
    m = iqa_metrics(pred, mos)
    assert m["srcc"] == pytest.approx(stats.spearmanr(pred, mos)[0])
    assert m["krcc"] == pytest.approx(stats.kendalltau(pred, mos)[0])
    assert m["plcc_raw"] == pytest.approx(stats.pearsonr(pred, mos)[0])
    assert m["plcc"] >= m["plcc_raw"] - 1e-6  # the fitted map can only help a linear relation
    assert m["mapping"] == "logistic4"


def test_selection_score_and_linear_fallback(monkeypatch):
    # SRCC 1; Pearson of (1,2,3,4) and (1,2,3,10) by hand: deviations (-1.5,-.5,.5,1.5) and (-3,-2,-1,6),
    # products summing to 14, squares to 5 and 50: 14 / sqrt(250) = 0.8854
    assert selection_score([1, 2, 3, 4], [1, 2, 3, 10]) == pytest.approx((1 + 14 / np.sqrt(250)) / 2)
    monkeypatch.setattr("qfm_lib.metrics.optimize.curve_fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no fit")))
    pred, mos = np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 4.0, 5.0, 9.0])
    m = iqa_metrics(pred, mos)
    assert m["mapping"] == "linear" and m["plcc"] == pytest.approx(m["plcc_raw"])
    slope, intercept = np.polyfit(pred, mos, 1)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((slope * pred + intercept - mos) ** 2)))


def test_logistic_mapping_recovers_nonlinear_relation():
    x = np.linspace(-3, 3, 100)
    mos = logistic4(x, 90, 10, 0.3, 0.7)
    m = iqa_metrics(x, mos)
    assert m["plcc"] == pytest.approx(1.0, abs=1e-6)
    assert m["plcc_raw"] < 0.99
    assert m["rmse"] == pytest.approx(0.0, abs=1e-3)


def test_degenerate_input():
    m = iqa_metrics([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0])
    assert np.isnan(m["plcc"]) and np.isnan(m["srcc"]) and np.isnan(m["krcc"])
    assert m["rmse"] == pytest.approx(np.std([1, 2, 3, 4]))
    assert selection_score([1, 1, 1], [1, 2, 3]) == -1.0
    with pytest.raises(ValueError, match="index 1 is nan"):
        iqa_metrics([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="MOS at index 0"):
        iqa_metrics([1.0, 2.0, 3.0], [np.inf, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 3"):
        iqa_metrics([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="differ in length"):
        iqa_metrics([1.0, 2.0, 3.0], [1.0, 2.0])
