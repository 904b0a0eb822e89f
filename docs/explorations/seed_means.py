"""Validation-only exploration: is the mean of window regression and lmc better because the two models
are complementary, or only because it averages two models? The same question asked of the seeds: the
mean of two seeds of one model averages two models that read the same features.

Written before any of its runs (2026-12-05). For each of the 10 committed splits, on its validation
part only (no test part is read; the seed-1 models are fitted here and kept nowhere):
- window regression (EMA) and pooled lmc, each with seed 0 (the protocol's) and seed 1;
- the selection score (SRCC + PLCC) / 2 of: each model alone; each model's two-seed mean; the mean of
  window regression and lmc (seed 0, the study's variant); and the mean of all four.
Rule: the word "complementary" (README, notebook 06) stands if the mean of window regression and lmc has
a median validation score at least 0.004 above each two-seed mean (0.004: two fixed variants of equal
worth lead by more than that on 3% of draws, notebook 06's exercise 5); otherwise the docs say that
the means' gain is, within what this check can tell, that of averaging two models.
About 10 min of CPU (20 fits, two at a time). Run from the repository root with QFM_DATA_ROOT set:

    python docs/explorations/seed_means.py
"""
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

from qfm_lib import protocol, study
from qfm_lib.metrics import selection_score

MODELS = {"window regression": "window regression (EMA)", "lmc": "lmc"}


def validation_predictions(inputs: protocol.ProtocolInputs, variant: str, split: int, seed: int) -> np.ndarray:
    torch.set_num_threads(1)
    score = protocol._fit(replace(inputs, seed=seed), variant, split)[0]
    return score(inputs.parts(split)["val"])


inputs = protocol.inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0", n_crops=5), n_views=5)
jobs = [(short, split, seed) for split in range(10) for short in MODELS for seed in (0, 1)]
with protocol.row_workers():  # fresh workers after a source edit; loky retiring a grown worker is no fault
    preds = Parallel(n_jobs=2, backend="loky", verbose=5)(
        delayed(validation_predictions)(inputs, MODELS[short], split, seed) for short, split, seed in jobs)
pred = dict(zip(jobs, preds))

rows = []
for split in range(10):
    y = inputs.y[inputs.parts(split)["val"]]
    p = {f"{short} s{seed}": pred[short, split, seed] for short in MODELS for seed in (0, 1)}
    combos = {**p,
              "window regression, 2 seeds": (p["window regression s0"] + p["window regression s1"]) / 2,
              "lmc, 2 seeds": (p["lmc s0"] + p["lmc s1"]) / 2,
              "window regression + lmc": (p["window regression s0"] + p["lmc s0"]) / 2,
              "all four": sum(p.values()) / 4}
    rows += [{"split": split, "model": name, "val_score": selection_score(q, y)} for name, q in combos.items()]
table = pd.DataFrame(rows).pivot(index="split", columns="model", values="val_score")
print(table.round(4).to_string())
median = table.median()
print("\nmedian validation score:\n" + median.round(4).to_string())
margins = {m: median["window regression + lmc"] - median[m] for m in ("window regression, 2 seeds", "lmc, 2 seeds")}
print("\nwindow regression + lmc against each two-seed mean: "
      + ", ".join(f"{m} {d:+.4f} (higher on {int((table['window regression + lmc'] > table[m]).sum())} of 10 splits)"
                  for m, d in margins.items()))
print("rule (margin >= 0.004 against both):", "complementary" if min(margins.values()) >= 0.004 else "not shown")
