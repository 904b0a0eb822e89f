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

The check ran with its own copy of the tail (commit d56ba0b); that copy became qfm_lib/tail.py
(DecoderConfig.tail_rate), which this script now uses. The library's tail gives the copy's numbers:
split 6, seed 0, rate 0.3 refitted with it scored 0.819582 on validation, as in the CSV.

Writes docs/explorations/learned_tail.csv (every fit) and prints the verdict. Run from the repository
root with QFM_DATA_ROOT set:

    python docs/explorations/learned_tail.py
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

from qfm_lib import protocol, study
from qfm_lib.tail import LearnedTail

from _window_regression import paired_rule, validation_scores  # this folder

VARIANT = "window regression (EMA)"
RATES = (0.03, 0.1, 0.3)
SPLITS = (6, 7, 8, 9)
SEEDS = (0, 1)
BASELINE = Path(__file__).with_name("rank_loss.csv")


def reproduction_error(inputs: protocol.ProtocolInputs, rows: np.ndarray) -> pd.DataFrame:
    """Relative error of the folded tail's block6 and head maps on the cached block5 cells, whole maps."""
    c = inputs.tokens.channels
    tail = LearnedTail.for_tokens(inputs.tokens.backbone, np.zeros(c), np.ones(c), RATES[0])  # delta = 0
    out = []
    for r in rows:
        (h, w), start = inputs.tokens.grid[r], inputs.tokens.offsets[r]
        cells = torch.from_numpy(np.asarray(inputs.tokens.tokens[start:start + h * w], np.float32)).view(h, w, -1)
        with torch.no_grad():
            maps = tail.maps(cells[..., slice(*tail.read)].permute(2, 0, 1)[None])[0].permute(1, 2, 0)
        b6 = tail.write
        for stage, got, want in (("block6", maps[..., :320], cells[..., b6:b6 + 320]),
                                 ("head", maps[..., 320:], cells[..., b6 + 320:])):
            out.append({"stage": stage, "relative error": float((got - want).norm() / want.norm())})
    return pd.DataFrame(out)


def validation_fit(inputs: protocol.ProtocolInputs, split: int, seed: int, rate: float) -> dict:
    return {"split": split, "seed": seed, "rate": rate, **validation_scores(inputs, split, seed, VARIANT, tail_rate=rate)}


def main() -> None:
    inputs = protocol.inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0"))
    err = reproduction_error(inputs, np.arange(0, len(inputs.y), 50))
    print("folded tail at r = 0 against the cached cells (relative error, whole maps):\n"
          + err.groupby("stage")["relative error"].describe()[["mean", "max"]].to_string())

    jobs = [(split, seed, rate) for split in SPLITS for seed in SEEDS for rate in RATES]
    with protocol.row_workers():  # fresh workers after a source edit; loky retiring a grown worker is no fault
        rows = pd.DataFrame(Parallel(n_jobs=2, backend="loky", verbose=5)(
            delayed(validation_fit)(inputs, *job) for job in jobs))
    base = pd.read_csv(BASELINE).query("weight == 0").assign(rate=0.0).drop(columns="weight")
    rows = pd.concat([base, rows], ignore_index=True)
    rows.to_csv(Path(__file__).with_suffix(".csv"), index=False, float_format="%.6f")

    print(rows.groupby("rate")[["val_score", "val_plcc", "val_srcc"]].median().round(4).to_string())
    paired_rule(rows, "rate", 0.0, "d_r", "worth building")


if __name__ == "__main__":
    main()
