"""What this folder's two-seed token checks (two_scales.py, early_stages.py, learned_tail.py, tail_rate.py)
share: window regression fitted for one split and seed (on a token set of the check's own, or with
settings of its own), and the protocol's own seed-0 models of window regression and pooled lmc, each
scoring a split's validation part."""
from dataclasses import replace

import numpy as np
import torch

from qfm_lib import protocol
from qfm_lib.decoder import TokenSet
from qfm_lib.local_manifold import fit_manifold_decoder
from qfm_lib.metrics import iqa_metrics, selection_score

VARIANT = "window regression (EMA)"


def validation_predictions(tokens: TokenSet, inputs: protocol.ProtocolInputs, split: int, seed: int) -> np.ndarray:
    """Window regression with the registry's settings, trained on `tokens` with `seed`: its predictions
    for the split's validation part (no model is kept)."""
    torch.set_num_threads(1)  # as the protocol's workers
    cfg = replace(inputs.variant(VARIANT).config, seed=seed)
    parts = inputs.parts(split)
    return fit_manifold_decoder(tokens, inputs.y, parts, cfg).predict(tokens, parts["val"])


def validation_scores(inputs: protocol.ProtocolInputs, split: int, seed: int, variant: str = VARIANT,
                      **settings) -> dict:
    """A token variant with the registry's settings, `settings` replaced, trained with `seed` on the cached
    token maps: its validation scores and best epoch (no model is kept, no test part is scored)."""
    torch.set_num_threads(1)  # as the protocol's workers
    cfg = replace(inputs.variant(variant).config, seed=seed, **settings)
    parts = inputs.parts(split)
    model = fit_manifold_decoder(inputs.tokens, inputs.y, parts, cfg)
    pred, y_val = model.predict(inputs.tokens, parts["val"]), inputs.y[parts["val"]]
    m = iqa_metrics(pred, y_val)
    return {"val_score": selection_score(pred, y_val), "val_plcc": m["plcc"], "val_srcc": m["srcc"],
            "best_epoch": model.best_epoch}


def protocol_validation_predictions(inputs: protocol.ProtocolInputs, split: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation predictions of the protocol's seed-0 models (cached with their rows) of window
    regression on the cached token maps and of pooled lmc."""
    val = inputs.parts(split)["val"]
    return (protocol.trained_model(inputs, VARIANT, split).predict(inputs.tokens, val),
            protocol.trained_model(inputs, "lmc", split).predict(inputs.crops[val]))
