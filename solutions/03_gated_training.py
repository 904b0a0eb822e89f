"""Solutions to the exercises of notebooks/03_gated_training.ipynb, on a 60-image subset (split 0;
validation scores only, the test part is not read)."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _small import SEED, small_study  # noqa: E402

from qfm_lib import protocol  # noqa: E402
from qfm_lib.decoder import QualityDecoder, TokenSet, fit_decoder  # noqa: E402
from qfm_lib.metrics import selection_score  # noqa: E402
from qfm_lib.qfm_iqm import fit_qfm_decoder  # noqa: E402
from qfm_lib.splits import split_parts  # noqa: E402

QFM = "qfm-iqm (gate+adversarial matching)"


def _setup():
    s = small_study()
    tokens = TokenSet(s.features.tokens, s.features.token_grid, s.features.names)
    return s, tokens, split_parts(s.splits, 0)


def _val(model, tokens, y, parts) -> float:
    return round(float(selection_score(model.predict(tokens, parts["val"]), y[parts["val"]])), 3)


def solution_1() -> dict:
    """A single large matching strength (0.6) against the validation-chosen one."""
    s, tokens, parts = _setup()
    cfg = replace(protocol.VARIANTS[QFM].config, seed=SEED, max_epochs=8)
    chosen = fit_qfm_decoder(tokens, s.mos, s.features.full, parts, cfg)
    large = fit_qfm_decoder(tokens, s.mos, s.features.full, parts, cfg, eps_grid=(0.6,))
    return {"chosen_eps": chosen.config.adv_eps, "val_chosen": _val(chosen, tokens, s.mos, parts),
            "val_eps_0.6": _val(large, tokens, s.mos, parts)}


def solution_2() -> dict:
    """Whole token maps (window 0) vs the chosen windows for the plain decoder."""
    s, tokens, parts = _setup()
    out = {}
    base = protocol.VARIANTS["decoder"].config
    for window in (base.window, 0):
        cfg = replace(base, seed=SEED, window=window, max_epochs=8)
        out[f"window_{window}"] = _val(fit_decoder(tokens, s.mos, parts["train"], parts["val"], cfg), tokens, s.mos, parts)
    return out


def solution_3() -> dict:
    """One random candidate partner (no worst-case choice) against two."""
    s, tokens, parts = _setup()
    out = {}
    for m in (1, 2):
        cfg = replace(protocol.VARIANTS[QFM].config, seed=SEED, adv_candidates=m, max_epochs=8)
        out[f"candidates_{m}"] = _val(fit_qfm_decoder(tokens, s.mos, s.features.full, parts, cfg, eps_grid=(0.3,)),
                                      tokens, s.mos, parts)
    return out


class StaticGateDecoder(QualityDecoder):
    """Exercise 4: a static per-channel gate (one learned vector), not conditioned on the image."""

    def __init__(self, channels, cfg):
        super().__init__(channels, replace(cfg, gated=False))
        self.static = nn.Parameter(torch.zeros(channels))

    def gate_values(self, x):
        return (2 * torch.sigmoid(self.static)).expand(*x.shape[:-2], -1)


def solution_4() -> dict:
    """A static gate has C parameters instead of the MLP gate's 2*64*C: count them."""
    _, tokens, _ = _setup()
    cfg = protocol.VARIANTS["decoder+gate"].config
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    static, dynamic = StaticGateDecoder(tokens.channels, cfg), QualityDecoder(tokens.channels, cfg)
    x = torch.randn(2, 49, tokens.channels)
    assert static(x)[0].shape == (2,)
    return {"static_gate_params": count(static), "input_conditioned_gate_params": count(dynamic)}


if __name__ == "__main__":
    for fn in (solution_1, solution_2, solution_3, solution_4):
        print(fn.__name__, fn())
