"""Validation-only check: do the backbone's early stages, added to the token maps, help window regression?

The token maps hold per-cell statistics of block3-block6 and the head (2176 channels). The stem and
blocks 0-2 are left out. Those fine stages (stride 2-8) see the grain of a photo: noise, blur,
compression. The pooled vector that ridge and the pooled-crop models read includes their means and
stds. That could be part of why pooled-crop lmc complements window regression (docs/method.md,
"Complementary, or only two models averaged?").

Written before any of its runs (2026-12-05). The per-cell mean and std of the stem and of blocks 0-2
(32, 16, 24 and 40 channels, pooled to each image's stride-32 token grid as `features.token_cells`
pools block3 and block4) are computed once here with the PyTorch backbone. They are appended to the
cached token maps (2176 + 224 = 2400 channels). Window regression (EMA) with the registry's settings
reads them, on the validation parts of splits 6-9 with training seeds 0 and 1. No test part is scored
and no model is kept. The baseline is window regression on the cached maps, with the same splits and
seeds (seed 0: the protocol's own models).
Rule: d = validation score (SRCC + PLCC) / 2 with the early stages minus without, per (split, seed), 8
pairs. The early stages are adopted if the mean of d is at least 0.005 and d > 0 on at least 6 of 8.
Adopted means: the token maps gain those stages (features.TOKEN_STAGES), so the next full run
re-extracts them, reruns the settings search and recomputes every token row. Also reported, not part of
the rule, with seed 0: the mean with pooled lmc, with and without the early stages (if they are what
lmc adds, that mean gains less than window regression alone).

About 2 min of extraction and 6 min of training on 2 cores. Writes docs/explorations/early_stages.csv
(every validation score) and prints the verdict. Run from the repository root with QFM_DATA_ROOT set:

    python docs/explorations/early_stages.py
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from torch.nn import functional as F
from tqdm.auto import tqdm

from qfm_lib import protocol, study
from qfm_lib.backbones import load_backbone
from qfm_lib.tokens import TokenSet
from qfm_lib.features import to_tensor
from qfm_lib.images import load_rgb
from qfm_lib.metrics import selection_score

from _window_regression import protocol_validation_predictions, validation_predictions  # this folder

EARLY = 4  # the stem and blocks 0-2
SPLITS = (6, 7, 8, 9)
SEEDS = (0, 1)


@torch.no_grad()
def early_cells(paths: list[str], grids: np.ndarray) -> np.ndarray:
    """(total cells, 224) float16: per-cell mean and std of the stem and blocks 0-2 on each image's grid."""
    backbone = load_backbone("tf_efficientnet_lite0")
    m = backbone.model.eval()
    out = []
    for path, grid in zip(tqdm(paths, desc="early stages"), grids):
        x = m.bn1(m.conv_stem(to_tensor(load_rgb(path), backbone)[None]))
        maps = [x]
        for block in m.blocks[:EARLY - 1]:
            x = block(x)
            maps.append(x)
        size = tuple(int(g) for g in grid)
        cells = []
        for fmap in maps:
            mean = F.adaptive_avg_pool2d(fmap, size)
            cells += [mean, (F.adaptive_avg_pool2d(fmap.square(), size) - mean.square()).clamp_min_(0).sqrt_()]
        out.append(torch.cat(cells, 1)[0].permute(1, 2, 0).reshape(-1, sum(2 * f.shape[1] for f in maps)))
    return torch.cat(out).half().numpy()


def main() -> None:
    data = study.load_study_data("livec", "tf_efficientnet_lite0", n_crops=5)
    inputs = protocol.inputs_from_study(data)
    feats = data.features
    extra = early_cells(list(data.table["path"]), feats.token_grid)
    wide = TokenSet(np.concatenate([np.asarray(feats.tokens), extra], axis=1), feats.token_grid, feats.names)
    print(f"token channels: {inputs.tokens.channels} cached + {extra.shape[1]} early = {wide.channels}")

    jobs = [(with_early, split, seed) for split in SPLITS for seed in SEEDS for with_early in (True, False)
            if with_early or seed != 0]
    with protocol.row_workers():  # fresh workers after a source edit; loky retiring a grown worker is no fault
        preds = Parallel(n_jobs=2, backend="loky", verbose=5)(
            delayed(validation_predictions)(wide if with_early else inputs.tokens, inputs, split, seed)
            for with_early, split, seed in jobs)
    pred = {("early" if e else "cached", split, seed): p for (e, split, seed), p in zip(jobs, preds)}
    for split in SPLITS:  # seed 0 on the cached maps: the protocol's models
        pred["cached", split, 0], pred["lmc", split, 0] = protocol_validation_predictions(inputs, split)

    rows = []
    for split in SPLITS:
        y = inputs.y[inputs.parts(split)["val"]]
        p = {f"{k} s{seed}": pred[k, split, seed] for k in ("cached", "early") for seed in SEEDS}
        p |= {"cached + lmc s0": (p["cached s0"] + pred["lmc", split, 0]) / 2,
              "early + lmc s0": (p["early s0"] + pred["lmc", split, 0]) / 2}
        rows += [{"split": split, "model": m, "val_score": selection_score(q, y)} for m, q in p.items()]
    table = pd.DataFrame(rows).pivot(index="split", columns="model", values="val_score")
    table.to_csv(Path(__file__).with_suffix(".csv"), float_format="%.6f")
    print(table.round(4).to_string())
    print("\nmedian validation score:\n" + table.median().round(4).to_string())

    d = pd.concat([table[f"early s{s}"] - table[f"cached s{s}"] for s in SEEDS])
    adopted = d.mean() >= 0.005 and (d > 0).sum() >= 6
    print(f"\nd (early - cached) per (split, seed): {np.round(d.to_numpy(), 4)}; mean {d.mean():+.4f}, "
          f"positive on {(d > 0).sum()} of {len(d)}")
    print("rule:", "the early stages are adopted" if adopted else "not adopted: nothing changes")


if __name__ == "__main__":
    main()
