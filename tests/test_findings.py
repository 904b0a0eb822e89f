"""qfm_lib.findings: words follow the numbers, in every direction."""
import re

import numpy as np
import pandas as pd
import pytest

from qfm_lib import findings as F
from qfm_lib import stats as S


def _results(seed=0, n=10):
    """ridge; 'strong' beats it by 0.05 on every split; 'same' is ridge plus noise; 'weak' loses by 0.05."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.78, 0.84, n)
    out = []
    for name, shift in [("ridge", 0.0), ("strong", 0.05), ("same", 0.0), ("weak", -0.05)]:
        noise = 0 if name == "ridge" else rng.normal(0, 0.004, n)
        plcc = base + shift + noise
        out.append(pd.DataFrame({"variant": name, "split": range(n), "plcc": plcc,
                                 "srcc": plcc - 0.02, "rmse": 20 - 40 * (plcc - 0.8)}))
    return pd.concat(out, ignore_index=True)


@pytest.fixture(scope="module")
def table():
    return S.compare(_results(), "ridge", metrics=("plcc", "srcc", "rmse"), n_train=800, n_test=200)


def _row(table, variant, metric):
    return table[(table.variant == variant) & (table.metric == metric)].iloc[0]


def test_outcomes_follow_the_numbers(table):
    for metric in ("plcc", "srcc", "rmse"):  # rmse: lower is better, so 'strong' still wins
        assert F.outcome(_row(table, "strong", metric)) == "better"
        assert F.outcome(_row(table, "same", metric)) == "no evidence"
        assert F.outcome(_row(table, "weak", metric)) == "worse"
    assert _row(table, "strong", "rmse").mean_diff < 0


def test_sentences(table):
    beats = F.comparison_sentence(_row(table, "strong", "plcc"))
    assert re.match(r"\*\*strong beats ridge\*\* on PLCC: Δ = \+0\.0[45]\d \(median over 10 splits", beats)
    assert "95% CI [+0.0" in beats and "Holm-adjusted corrected-t p" in beats
    worse = F.comparison_sentence(_row(table, "weak", "srcc"))
    assert re.match(r"\*\*ridge beats weak\*\* on SRCC: Δ = -0\.0[45]\d ", worse)
    none = F.comparison_sentence(_row(table, "same", "plcc"))
    assert none.startswith("No evidence that same beats ridge on PLCC: Δ = ") and "Holm p = " in none
    assert F.comparison_sentence(_row(table, "strong", "rmse")).startswith("**strong beats ridge** on RMSE")
    # the same row with a stricter alpha than its p loses its verdict
    row = _row(table, "strong", "plcc").copy()
    row["p_holm"] = 0.02
    assert F.comparison_sentence(row, alpha=0.01).startswith("No evidence")
    assert "p = 0.020" in F.comparison_sentence(row, alpha=0.01)


def test_findings_markdown(table):
    md = F.findings_markdown(table)
    assert md.startswith("## What we found\n")
    assert "9 comparisons" in md and "3 better, 3 worse, 3 without evidence" in md
    bullets = [ln for ln in md.splitlines() if ln.startswith("- ")]
    assert len(bullets) == 9
    assert md.index("**Better than the baseline**") < md.index("**Worse than the baseline**") \
        < md.index("**No evidence of a difference**")
    only_same = F.findings_markdown(table[table.variant == "same"], title="Ablation")
    assert only_same.startswith("## Ablation") and "0 better, 0 worse, 3 without" in only_same
    assert "Better than" not in only_same


def test_rerun_with_other_numbers_changes_words():
    res = _results()
    res.loc[res.variant == "strong", ["plcc", "srcc"]] -= 0.05  # strong is now ridge plus noise
    res.loc[res.variant == "strong", "rmse"] += 2.0
    t = S.compare(res, "ridge", metrics=("plcc",), n_train=800, n_test=200)
    assert F.outcome(_row(t, "strong", "plcc")) == "no evidence"


@pytest.mark.parametrize("rho, words", [(0.05, "negligible"), (-0.099, "negligible"), (0.1, "weak positive"),
                                        (-0.25, "weak negative"), (0.3, "moderate positive"),
                                        (-0.49, "moderate negative"), (0.5, "strong positive"),
                                        (-0.9, "strong negative"), (float("nan"), "undefined")])
def test_correlation_words(rho, words):
    assert F.correlation_words(rho) == words


def test_ratio_words():
    assert F.ratio_words(0.6) == "smaller than"
    assert F.ratio_words(0.96) == "about the same as" and F.ratio_words(1.04) == "about the same as"
    assert F.ratio_words(1.2) == "larger than"
    assert F.ratio_words(9.0, reference=10.0, tol=0.2) == "about the same as"
    assert F.ratio_words(float("nan")) == "not comparable with"
