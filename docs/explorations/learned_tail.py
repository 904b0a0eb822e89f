"""Validation-only check: does the backbone's last stage, trained with the decoder, raise window regression?

Every lever tried so far kept the backbone frozen (docs/method.md, "What was tried to raise the absolute
numbers"); fine-tuning all of Lite0 costs about 11 h for ten splits on this CPU. Its last stage is cheap,
though: block6 (one inverted-residual block, 192 -> 1152 -> 320 channels) and the head (320 -> 1280)
act on block5's stride-32 map, which the token cache holds as it is. So the tokens' block6 and head
channels can be recomputed from the cached block5 cells by a copy of those layers that learns with the
decoder: features that learn, a little, without a second pass of the backbone.

The tail: Lite0's pretrained block6 and head with their batch norms folded into the convolutions
(eval-mode statistics, as in fine-tuning with frozen BN), each weight and bias w = w0 + r * delta with
delta learned from zero. AdamW's steps on delta are about lr in size, so the tail learns at r times the
decoder's rate, and weight decay pulls it back towards the pretrained weights. On each training window
(5x5 cells) the tail reads the window's block5 cells alone, zero-padded at its border as a crop would
be; evaluation does the same on each evaluation window. The decoder is window regression (EMA) with
the registry's settings, unchanged otherwise.

Written before any of its runs (2026-12-05). On the validation parts of splits 6-9 (the splits of the
earlier two-seed checks: rank_loss.py, two_scales.py, early_stages.py) with training seeds 0 and 1; no
test part is scored and no model is kept. The baseline, r = 0, is read from rank_loss.csv (its weight-0
fits, which reproduced the protocol's rows exactly for seed 0). Rates r in {0.03, 0.1, 0.3}.
Rule: d_r = validation score (SRCC + PLCC) / 2 with the tail at rate r minus without, per (split,
seed), 8 pairs. The r with the highest mean d_r is worth building into the study (a variant of its own,
in a later change, with the settings search rerun) if its mean d_r >= 0.005 and d_r > 0 on at least 6
of the 8 pairs. Otherwise docs/method.md reports the numbers and nothing is built.
Also printed first: how closely the folded tail, at r = 0, reproduces the cached block6 and head cells
from the cached block5 cells (the fp16 cache and the ONNX engine bound the agreement).

Writes docs/explorations/learned_tail.csv (every fit) and prints the verdict. Run from the repository
root with QFM_DATA_ROOT set:

    python docs/explorations/learned_tail.py
"""
import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from torch import nn
from torch.nn import functional as F

from qfm_lib import decoder, protocol, study
from qfm_lib.backbones import load_backbone
from qfm_lib.features import token_channel_names
from qfm_lib.local_manifold import fit_manifold_decoder
from qfm_lib.metrics import iqa_metrics, selection_score

VARIANT = "window regression (EMA)"
RATES = (0.03, 0.1, 0.3)
SPLITS = (6, 7, 8, 9)
SEEDS = (0, 1)
BASELINE = Path(__file__).with_name("rank_loss.csv")


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution followed by an eval-mode batch norm, as one convolution's weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (conv.weight * scale[:, None, None, None]).detach().clone(), (bn.bias - bn.running_mean * scale).detach().clone()


class LearnedTail(nn.Module):
    """Lite0's block6 and head on normalised token windows (B, T, C), T = w x w cells: recomputes the
    block6 and head channels from the block5 channels; every other channel passes unchanged."""

    def __init__(self, backbone, mean: np.ndarray, std: np.ndarray, rate: float):
        super().__init__()
        names = token_channel_names(backbone.stage_names, backbone.stage_channels)
        first = {stage: next(i for i, (s, _, _) in enumerate(names) if s == stage) for stage in ("block5", "block6", "head")}
        if not (first["block6"] == first["block5"] + 192 and first["head"] == first["block6"] + 320 == len(names) - 1280):
            raise ValueError("expected the token channels to end with block5 (192), block6 (320), head (1280)")
        self.b5, self.b6 = first["block5"], first["block6"]
        block, m = backbone.model.blocks[6][0], backbone.model
        layers = [_folded(block.conv_pw, block.bn1), _folded(block.conv_dw, block.bn2),
                  _folded(block.conv_pwl, block.bn3), _folded(m.conv_head, m.bn2)]
        self.rate = rate
        for i, (w, b) in enumerate(layers):
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", b)
            setattr(self, f"dw{i}", nn.Parameter(torch.zeros_like(w)))
            setattr(self, f"db{i}", nn.Parameter(torch.zeros_like(b)))
        for name, values in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.from_numpy(np.asarray(values, np.float32)).clone())

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (getattr(self, f"w{i}") + self.rate * getattr(self, f"dw{i}"),
                getattr(self, f"b{i}") + self.rate * getattr(self, f"db{i}"))

    def maps(self, block5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 192, H, W) raw block5 maps -> raw block6 (B, 320, H, W) and head (B, 1280, H, W) maps."""
        h = F.relu6(F.conv2d(block5, *self.layer(0)))
        h = F.relu6(F.conv2d(h, *self.layer(1), padding=1, groups=h.shape[1]))
        b6 = F.conv2d(h, *self.layer(2))
        return b6, F.relu6(F.conv2d(b6, *self.layer(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        side = int(round(t ** 0.5))
        if side * side != t:
            raise ValueError(f"the tail needs square windows of cells, got {t} cells")
        s5 = slice(self.b5, self.b6)
        block5 = (x[..., s5].float() * self.std[s5] + self.mean[s5]).view(b, side, side, -1).permute(0, 3, 1, 2)
        b6, head = self.maps(block5)
        out = torch.cat([b6, head], 1).permute(0, 2, 3, 1).reshape(b, t, -1).float()
        out = (out - self.mean[self.b6:]) / self.std[self.b6:]
        return torch.cat([x[..., :self.b6], out.to(x.dtype)], -1)


class TailDecoder(decoder.QualityDecoder):
    """The quality decoder reading the tokens through a LearnedTail (before its gate, if any)."""

    def __init__(self, channels: int, cfg: decoder.DecoderConfig, tail: LearnedTail):
        super().__init__(channels, cfg)
        self.tail = tail

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        return super()._gated(self.tail(x))

    def window_scores_of_maps(self, maps: list[torch.Tensor], windows: torch.Tensor) -> torch.Tensor:
        """Each window through the tail on its own cells (as in training), not each cell once."""
        with self._autocast():
            return self._decode(self.proj(self._gated(torch.cat(maps)[windows])), False)[0].float()


@contextlib.contextmanager
def tail_decoders(tokens: decoder.TokenSet, rate: float):
    """Within the block, fit_decoder builds TailDecoders, their tail normalised with the token set's
    statistics at the time (fit_decoder sets them from the training part before it builds a model)."""
    backbone, original = load_backbone(), decoder.QualityDecoder

    def build(channels: int, cfg: decoder.DecoderConfig) -> TailDecoder:
        return TailDecoder(channels, cfg, LearnedTail(backbone, tokens.mean, tokens.std, rate))

    decoder.QualityDecoder = build
    try:
        yield
    finally:  # a worker's next task unpickles TailDecoder, whose base is looked up here
        decoder.QualityDecoder = original


def reproduction_error(inputs: protocol.ProtocolInputs, rows: np.ndarray) -> pd.DataFrame:
    """Relative error of the folded tail's block6 and head maps on the cached block5 cells, whole maps."""
    tail = LearnedTail(load_backbone(), np.zeros(inputs.tokens.channels), np.ones(inputs.tokens.channels), 0.0)
    out = []
    for r in rows:
        (h, w), start = inputs.tokens.grid[r], inputs.tokens.offsets[r]
        cells = torch.from_numpy(np.asarray(inputs.tokens.tokens[start:start + h * w], np.float32)).view(h, w, -1)
        with torch.no_grad():
            maps = tail.maps(cells[..., tail.b5:tail.b6].permute(2, 0, 1)[None])
        for stage, got, want in zip(("block6", "head"), maps, (cells[..., tail.b6:tail.b6 + 320], cells[..., tail.b6 + 320:])):
            got = got[0].permute(1, 2, 0)
            out.append({"stage": stage, "relative error": float((got - want).norm() / want.norm())})
    return pd.DataFrame(out)


def validation_fit(inputs: protocol.ProtocolInputs, split: int, seed: int, rate: float) -> dict:
    torch.set_num_threads(1)  # as the protocol's workers
    cfg = replace(inputs.variant(VARIANT).config, seed=seed)
    parts = inputs.parts(split)
    with tail_decoders(inputs.tokens, rate):
        model = fit_manifold_decoder(inputs.tokens, inputs.y, parts, cfg)
    pred, y_val = model.predict(inputs.tokens, parts["val"]), inputs.y[parts["val"]]
    m = iqa_metrics(pred, y_val)
    return {"split": split, "seed": seed, "rate": rate, "val_score": selection_score(pred, y_val),
            "val_plcc": m["plcc"], "val_srcc": m["srcc"], "best_epoch": model.best_epoch}


def main() -> None:
    inputs = protocol.inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0"))
    err = reproduction_error(inputs, np.arange(0, len(inputs.y), 50))
    print("folded tail at r = 0 against the cached cells (relative error, whole maps):\n"
          + err.groupby("stage")["relative error"].describe()[["mean", "max"]].to_string())

    jobs = [(split, seed, rate) for split in SPLITS for seed in SEEDS for rate in RATES]
    rows = pd.DataFrame(Parallel(n_jobs=2, backend="loky", verbose=5)(
        delayed(validation_fit)(inputs, *job) for job in jobs))
    base = pd.read_csv(BASELINE).query("weight == 0").assign(rate=0.0).drop(columns="weight")
    rows = pd.concat([base, rows], ignore_index=True)
    rows.to_csv(Path(__file__).with_suffix(".csv"), index=False, float_format="%.6f")

    print(rows.groupby("rate")[["val_score", "val_plcc", "val_srcc"]].median().round(4).to_string())
    score = rows.pivot_table(index=["split", "seed"], columns="rate", values="val_score")
    diffs = score.sub(score[0.0], axis=0).drop(columns=0.0)
    print("\nd_r per (split, seed):\n" + diffs.round(4).to_string())
    summary = pd.DataFrame({"mean d_r": diffs.mean(), "positive pairs": (diffs > 0).sum()})
    print("\n" + summary.round(4).to_string())
    best = summary["mean d_r"].idxmax()
    adopted = summary.loc[best, "mean d_r"] >= 0.005 and summary.loc[best, "positive pairs"] >= 6
    print(f"\nrule: rate {best} {'worth building' if adopted else 'not adopted'} "
          f"(mean d_r {summary.loc[best, 'mean d_r']:+.4f}, positive on {int(summary.loc[best, 'positive pairs'])} "
          f"of {len(diffs)}; needs >= 0.005 and >= 6)")


if __name__ == "__main__":
    main()
