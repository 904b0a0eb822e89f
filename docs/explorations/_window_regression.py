"""What this folder's two-seed token checks (two_scales.py, early_stages.py) share: window regression
fitted on a token set for one split and seed, and the protocol's own seed-0 models of window regression
and pooled lmc, each scoring a split's validation part."""
from dataclasses import replace

import numpy as np
import torch

from qfm_lib import protocol
from qfm_lib.decoder import TokenSet
from qfm_lib.local_manifold import fit_manifold_decoder

VARIANT = "window regression (EMA)"


def validation_predictions(tokens: TokenSet, inputs: protocol.ProtocolInputs, split: int, seed: int) -> np.ndarray:
    """Window regression with the registry's settings, trained on `tokens` with `seed`: its predictions
    for the split's validation part (no model is kept)."""
    torch.set_num_threads(1)  # as the protocol's workers
    cfg = replace(inputs.variant(VARIANT).config, seed=seed)
    parts = inputs.parts(split)
    return fit_manifold_decoder(tokens, inputs.y, parts, cfg).predict(tokens, parts["val"])


def protocol_validation_predictions(inputs: protocol.ProtocolInputs, split: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation predictions of the protocol's seed-0 models (cached with their rows) of window
    regression on the cached token maps and of pooled lmc."""
    val = inputs.parts(split)["val"]
    return (protocol.trained_model(inputs, VARIANT, split).predict(inputs.tokens, val),
            protocol.trained_model(inputs, "lmc", split).predict(inputs.crops[val]))
