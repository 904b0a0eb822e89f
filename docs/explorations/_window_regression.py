"""What this folder's two-seed token checks (two_scales.py, early_stages.py, rank_loss.py, learned_tail.py,
tail_rate.py) share: window regression fitted for one split and seed (on a token set of the check's own, or
with settings of its own), the protocol's own seed-0 models of window regression and pooled lmc, each
scoring a split's validation part, and the paired rule that rank_loss.py, learned_tail.py and
tail_rate.py apply to their fits."""
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from qfm_lib import protocol
from qfm_lib.tokens import TokenSet
from qfm_lib.local_manifold import fit_manifold_decoder
from qfm_lib.metrics import iqa_metrics, selection_score

VARIANT = "window regression (EMA)"


def _fit_for_validation(inputs: protocol.ProtocolInputs, split: int, seed: int, variant: str,
                        tokens: TokenSet | None = None, **settings):
    """A token variant with the registry's settings, `settings` replaced, trained with `seed` on `tokens`
    (default: the token set its config reads): the model, that token set and the validation rows."""
    torch.set_num_threads(1)  # as the protocol's workers
    cfg = replace(inputs.variant(variant).config, seed=seed, **settings)
    parts = inputs.parts(split)
    tokens = inputs.tokens_for(cfg) if tokens is None else tokens
    return fit_manifold_decoder(tokens, inputs.y, parts, cfg), tokens, parts["val"]


def validation_predictions(tokens: TokenSet, inputs: protocol.ProtocolInputs, split: int, seed: int) -> np.ndarray:
    """Window regression with the registry's settings, trained on `tokens` with `seed`: its predictions
    for the split's validation part (no model is kept)."""
    model, tokens, val = _fit_for_validation(inputs, split, seed, VARIANT, tokens)
    return model.predict(tokens, val)


def validation_scores(inputs: protocol.ProtocolInputs, split: int, seed: int, variant: str = VARIANT,
                      **settings) -> dict:
    """A token variant with the registry's settings, `settings` replaced, trained with `seed` on the cached
    token maps: its validation scores and best epoch (no model is kept, no test part is scored)."""
    model, tokens, val = _fit_for_validation(inputs, split, seed, variant, **settings)
    pred, y_val = model.predict(tokens, val), inputs.y[val]
    m = iqa_metrics(pred, y_val)
    return {"val_score": selection_score(pred, y_val), "val_plcc": m["plcc"], "val_srcc": m["srcc"],
            "best_epoch": model.best_epoch}


def protocol_validation_predictions(inputs: protocol.ProtocolInputs, split: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation predictions of the protocol's seed-0 models (cached with their rows) of window
    regression on the cached token maps and of pooled lmc."""
    val = inputs.parts(split)["val"]
    return (protocol.trained_model(inputs, VARIANT, split).predict(inputs.tokens, val),
            protocol.trained_model(inputs, "lmc", split).predict(inputs.crops[val]))


def paired_rule(rows: pd.DataFrame, setting: str, baseline: float, label: str, verdict: str,
                min_mean: float = 0.005, min_pairs: int = 6) -> None:
    """Prints the rule of a two-seed check: d = validation score with each value of `setting` minus with
    `baseline`, per (split, seed); the value with the highest mean d passes ("verdict") if its mean d is at
    least min_mean and d > 0 on at least min_pairs pairs."""
    score = rows.pivot_table(index=["split", "seed"], columns=setting, values="val_score")
    diffs = score.sub(score[baseline], axis=0).drop(columns=baseline)
    print(f"\n{label} per (split, seed):\n" + diffs.round(4).to_string())
    summary = pd.DataFrame({f"mean {label}": diffs.mean(), "positive pairs": (diffs > 0).sum()})
    print("\n" + summary.round(4).to_string())
    best = summary[f"mean {label}"].idxmax()
    mean, positive = summary.loc[best, f"mean {label}"], int(summary.loc[best, "positive pairs"])
    passed = mean >= min_mean and positive >= min_pairs
    print(f"\nrule: {setting} {best} {verdict if passed else 'not adopted'} "
          f"(mean {label} {mean:+.4f}, positive on {positive} of {len(diffs)}; needs >= {min_mean} and >= {min_pairs})")
