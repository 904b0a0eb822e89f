"""'What we found' text generated from the numbers by explicit rules.

Notebooks never hard-code a verdict: a rerun that changes the numbers changes the words.

Rules
-----
comparison (a row of stats.compare), at level alpha:
    better       p_holm < alpha and the mean difference favours the variant
    worse        p_holm < alpha and the mean difference favours the baseline
    no evidence  otherwise (including p_holm NaN)
  "favours" follows stats.HIGHER_IS_BETTER: a positive difference for PLCC/SRCC/KRCC, a negative
  one for RMSE.
correlation_words(rho), on |rho|: < 0.1 negligible, < 0.3 weak, < 0.5 moderate, else strong;
  a sign word (positive/negative) follows unless negligible; NaN is "undefined".
ratio_words(value, reference, tol): "about the same as" when |value - reference| <= tol*|reference|,
  else "smaller than" / "larger than".
"""
from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

from .stats import HIGHER_IS_BETTER

CORRELATION_BANDS = ((0.1, "negligible"), (0.3, "weak"), (0.5, "moderate"), (math.inf, "strong"))


def _p(p: float) -> str:
    return "n/a" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"= {p:.3f}")


def outcome(row: Mapping, alpha: float = 0.05) -> str:
    """'better', 'worse' or 'no evidence' for one row of stats.compare (rules in the module doc)."""
    p, diff = row["p_holm"], row["mean_diff"]
    if pd.isna(p) or pd.isna(diff) or p >= alpha or diff == 0:
        return "no evidence"
    favours_variant = (diff > 0) == HIGHER_IS_BETTER.get(row["metric"], True)
    return "better" if favours_variant else "worse"


def comparison_sentence(row: Mapping, alpha: float = 0.05) -> str:
    """One sentence for one row of stats.compare, e.g.

    '**gated beats ridge** on PLCC: Δ = +0.012 (median over 10 splits; mean +0.011, 95% CI
    [+0.004, +0.020]), Holm-adjusted corrected-t p = 0.003.'
    """
    a, b, metric = row["variant"], row["baseline"], str(row["metric"]).upper()
    numbers = (f"Δ = {row['median_diff']:+.3f} (median over {int(row['n_splits'])} splits; "
               f"mean {row['mean_diff']:+.3f}, 95% CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}])")
    verdict = outcome(row, alpha)
    if verdict == "better":
        return f"**{a} beats {b}** on {metric}: {numbers}, Holm-adjusted corrected-t p {_p(row['p_holm'])}."
    if verdict == "worse":
        return f"**{b} beats {a}** on {metric}: {numbers}, Holm-adjusted corrected-t p {_p(row['p_holm'])}."
    return f"No evidence that {a} beats {b} on {metric}: {numbers}, Holm p {_p(row['p_holm'])}."


def findings_markdown(comparisons: pd.DataFrame, alpha: float = 0.05, title: str = "What we found") -> str:
    """A Markdown section: a summary line, then one bullet per comparison grouped by outcome."""
    verdicts = [outcome(row, alpha) for _, row in comparisons.iterrows()]
    counts = {v: verdicts.count(v) for v in ("better", "worse", "no evidence")}
    lines = [f"## {title}", "",
             f"{len(verdicts)} comparisons with the baseline (corrected resampled t-test over the "
             f"splits, Holm-adjusted across this table, α = {alpha:g}): {counts['better']} better, "
             f"{counts['worse']} worse, {counts['no evidence']} without evidence of a difference."]
    headings = {"better": "Better than the baseline", "worse": "Worse than the baseline",
                "no evidence": "No evidence of a difference"}
    for verdict, heading in headings.items():
        rows = [row for (_, row), v in zip(comparisons.iterrows(), verdicts) if v == verdict]
        if rows:
            lines += ["", f"**{heading}**", ""] + [f"- {comparison_sentence(r, alpha)}" for r in rows]
    return "\n".join(lines) + "\n"


def correlation_words(rho: float) -> str:
    """'negligible', 'weak positive', 'moderate negative', 'strong positive', ... (bands in the module doc)."""
    if rho is None or pd.isna(rho):
        return "undefined"
    strength = next(word for bound, word in CORRELATION_BANDS if abs(rho) < bound)
    return strength if strength == "negligible" else f"{strength} {'positive' if rho > 0 else 'negative'}"


def ratio_words(value: float, reference: float = 1.0, tol: float = 0.05) -> str:
    """'smaller than', 'about the same as' or 'larger than' `reference`, with relative tolerance tol."""
    if pd.isna(value) or pd.isna(reference):
        return "not comparable with"
    if abs(value - reference) <= tol * abs(reference):
        return "about the same as"
    return "smaller than" if value < reference else "larger than"
