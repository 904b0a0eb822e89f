"""Validation-only check: does a second, coarser scale of token maps add to window regression?

The study's best means (window regression + pooled-crop lmc) gain 0.010-0.018 on validation over
averaging two seeds of either member (seed_means.py): the two kinds of model read the photo differently.
A token-only way to get a second reading is a second scale, as multi-scale IQA models (e.g. MUSIQ) do:
the token maps of the photo downscaled to a shorter side of 256 px (an 8x8 grid on LIVEC's 500x500
photos, each cell 64 px of the original, so a 5x5 window sees 320 px instead of 160).

Written before any of its runs (2026-12-05). On the validation parts of splits 6-9 (used by no search or
check before rank_loss.py, which tried nothing at this scale) with training seeds 0 and 1; no test
part is scored and no model is kept. Window regression (EMA) with the registry's settings on:
- full: the native-scale token maps (for seed 0 the protocol's own models, read from the cache);
- half: the downscaled maps (its settings were chosen at the native scale and are not searched here);
- two scales: the mean of full's and half's predictions, same seed.
Also reported, not part of the rule: full's two-seed mean (what averaging alone gives), and, with seed 0,
the study's mean window regression + lmc and the same with half as a third member.
Rule: d = validation score (SRCC + PLCC) / 2 of two scales minus full's, per (split, seed), 8 pairs. A
second scale is a lever worth building into the study (a variant of its own, preregistered, in a later
change) if the mean of d is at least 0.005, d > 0 on at least 6 of 8, and two scales beats full's
two-seed mean in the median over the four splits (else the gain is what averaging two models gives).
Otherwise docs/method.md reports the numbers and nothing is built.

About 6 min of CPU after a one-off extraction of the downscaled maps (about 0.3 GB of cache). Writes
docs/explorations/two_scales.csv (every validation score) and prints the verdict. Run from the repository
root with QFM_DATA_ROOT set:

    python docs/explorations/two_scales.py
"""
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from qfm_lib import protocol, study
from qfm_lib.tokens import TokenSet
from qfm_lib.features import FeatureSpec, extract_features
from qfm_lib.metrics import selection_score

from _window_regression import protocol_validation_predictions, validation_predictions  # this folder

HALF_SIDE = 256
SPLITS = (6, 7, 8, 9)
SEEDS = (0, 1)


def main() -> None:
    data = study.load_study_data("livec", "tf_efficientnet_lite0", n_crops=5)
    inputs = protocol.inputs_from_study(data)
    half = extract_features(data.table, FeatureSpec(backbone="tf_efficientnet_lite0", resize=HALF_SIDE))
    half_tokens = TokenSet(half.tokens, half.token_grid, half.names)
    print(f"downscaled token maps: grids {sorted({tuple(g) for g in half.token_grid})}")

    jobs = [(scale, split, seed) for split in SPLITS for seed in SEEDS for scale in ("full", "half")
            if (scale, seed) != ("full", 0)]
    with protocol.row_workers():  # fresh workers after a source edit; loky retiring a grown worker is no fault
        preds = Parallel(n_jobs=2, backend="loky", verbose=5)(
            delayed(validation_predictions)(half_tokens if scale == "half" else inputs.tokens, inputs, split, seed)
            for scale, split, seed in jobs)
    pred = dict(zip(jobs, preds))
    for split in SPLITS:  # seed 0 at the native scale: the protocol's models (its rows' validation scores)
        pred["full", split, 0], pred["lmc", split, 0] = protocol_validation_predictions(inputs, split)

    rows = []
    for split in SPLITS:
        y = inputs.y[inputs.parts(split)["val"]]
        p = lambda *key: pred[key[0], split, key[1]]  # noqa: E731
        combos = {(f"{s} s{seed}"): p(s, seed) for s in ("full", "half") for seed in SEEDS}
        combos |= {f"two scales s{seed}": (p("full", seed) + p("half", seed)) / 2 for seed in SEEDS}
        combos |= {"full, two seeds": (p("full", 0) + p("full", 1)) / 2,
                   "full + lmc s0": (p("full", 0) + p("lmc", 0)) / 2,
                   "full + half + lmc s0": (p("full", 0) + p("half", 0) + p("lmc", 0)) / 3}
        rows += [{"split": split, "model": m, "val_score": selection_score(q, y)} for m, q in combos.items()]
    table = pd.DataFrame(rows).pivot(index="split", columns="model", values="val_score")
    table.to_csv(Path(__file__).with_suffix(".csv"), float_format="%.6f")
    print(table.round(4).to_string())
    print("\nmedian validation score:\n" + table.median().round(4).to_string())

    d = pd.concat([table[f"two scales s{s}"] - table[f"full s{s}"] for s in SEEDS])
    over_seeds = table["two scales s0"].median() - table["full, two seeds"].median()
    build = d.mean() >= 0.005 and (d > 0).sum() >= 6 and over_seeds > 0
    print(f"\nd (two scales - full) per (split, seed): {np.round(d.to_numpy(), 4)}; mean {d.mean():+.4f}, "
          f"positive on {(d > 0).sum()} of {len(d)}; two scales (s0) - full's two-seed mean, medians: {over_seeds:+.4f}")
    print("rule:", "a second scale is worth building" if build else "not shown: nothing is built")


if __name__ == "__main__":
    main()
