"""Solutions to the exercises of notebooks/03_gated_training.ipynb, on a 60-image subset (split 0;
validation scores only, the test part is not read)."""
from __future__ import annotations

import sys
from dataclasses import replace
from unittest import mock
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _small import SEED, small_study  # noqa: E402

from qfm_lib import analysis, decoder, pairs, protocol  # noqa: E402
from qfm_lib.decoder import QualityDecoder, fit_decoder  # noqa: E402
from qfm_lib.tokens import TokenSet  # noqa: E402
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
    """Windows as large as the smallest token grid (the whole map of every 500x500 photo) vs the
    chosen windows for the plain decoder. Window 0 (whole maps) needs every image of a batch to share
    one grid, which LIVEC's two larger photos break."""
    s, tokens, parts = _setup()
    out = {}
    base = protocol.VARIANTS["decoder"].config
    whole = int(tokens.grid[np.concatenate([parts["train"], parts["val"]])].min())
    for window in (base.window, whole):
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
    """Exercise 4: a static per-channel gate (one learned vector, C parameters), not conditioned on the image.
    Before a linear projection such a gate adds no function the projection could not already compute (it
    rescales the projection's input columns); only its training dynamics differ."""

    def __init__(self, channels, cfg, tail=None):
        super().__init__(channels, replace(cfg, gated=False), tail)
        self.static = nn.Parameter(torch.zeros(channels))

    def _gate(self, x):
        return (2 * torch.sigmoid(self.static)).expand(*x.shape[:-2], -1)

    def _gated(self, x):
        x = self._tailed(x)
        return x * self._gate(x).unsqueeze(-2)

    def gate_values(self, x):
        return self._gate(x).float()

    def window_scores_of_maps(self, maps, windows):  # evaluation projects each cell once: gate the cells first
        return super().window_scores_of_maps([m * self._gate(m) for m in maps], windows)


def solution_4() -> dict:
    """A static gate (C parameters) against the input-conditioned one (about 2*64*C): trained on split 0, then
    the channel preference of notebook 03 section 4, Spearman(mean gate, |SRCC(channel, MOS)|) per stage, on
    the training images."""
    s, tokens, parts = _setup()
    cfg = replace(protocol.VARIANTS["decoder+gate"].config, seed=SEED, max_epochs=8)
    count = lambda m: sum(p.numel() for p in m.gate.parameters()) if m.gate is not None else m.static.numel()  # noqa: E731
    with mock.patch.object(decoder, "QualityDecoder", StaticGateDecoder):
        static = fit_decoder(tokens, s.mos, parts["train"], parts["val"], cfg)
    dynamic = fit_decoder(tokens, s.mos, parts["train"], parts["val"], cfg)
    train = parts["train"]
    means = tokens.image_means(train)
    out = {}
    for name, model in (("static", static), ("input-conditioned", dynamic)):
        table = analysis.token_gate_table(model.gate_values(tokens, train), means, s.mos[train], s.features.token_channels)
        pref = analysis.gate_preference(table).set_index("stage")["spearman_gate_vs_abs_srcc"]
        out[name] = {"gate_params": count(model.model), "val": _val(model, tokens, s.mos, parts),
                     "preference_all": round(float(pref["all"]), 3)}
    return out


def solution_5() -> dict:
    """The other pair kind (similar semantics, different quality), mined on the training part only, pushes the
    two images' query states apart: a hinge on their cosine similarity, added to decoder+gate's loss."""
    s, tokens, parts = _setup()
    train, cfg = parts["train"], replace(protocol.VARIANTS["decoder+gate"].config, seed=SEED, max_epochs=8)
    mined = pairs.mine_pairs(analysis.stage_matrix(s.features, "all")[train], s.mos[train], list(train.astype(str)),
                             dist_low=0.2, gap_high=0.8)  # looser than notebook 02's 5 %: 37 training images here
    other = mined[mined.kind == pairs.KINDS[1]]
    partners: dict[int, list[int]] = {}
    for i, j in zip(train[other.i], train[other.j]):
        partners.setdefault(int(i), []).append(int(j))
        partners.setdefault(int(j), []).append(int(i))

    def push_apart(model, batch):
        has = [k for k, r in enumerate(batch.rows) if int(r) in partners]
        if not has:
            return batch.score.new_zeros(())
        mates = np.array([batch.rng.choice(partners[int(batch.rows[k])]) for k in has])
        tops, lefts = batch.tokens.random_positions(mates, cfg.window, batch.rng)
        mate_query = model(batch.tokens.windows(mates, tops, lefts, cfg.window, batch.x.dtype))[1]
        similarity = torch.nn.functional.cosine_similarity(batch.query[has, 0], mate_query, dim=-1)
        return 0.1 * torch.relu(similarity).mean()

    plain = fit_decoder(tokens, s.mos, train, parts["val"], cfg)
    pushed = fit_decoder(tokens, s.mos, train, parts["val"], cfg, [push_apart])
    return {"pairs": len(other), "images_with_a_partner": len(partners),
            "val_decoder+gate": _val(plain, tokens, s.mos, parts), "val_with_push_apart": _val(pushed, tokens, s.mos, parts)}


if __name__ == "__main__":
    for fn in (solution_1, solution_2, solution_3, solution_4, solution_5):
        print(fn.__name__, fn())
