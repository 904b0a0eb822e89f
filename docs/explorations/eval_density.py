"""Validation-only check: do denser evaluation windows score the token models better?

A token model scores an image as the mean over its evaluation windows: by default the fewest evenly
spaced windows that cover the map (`DecoderConfig.eval_grid` 0: 4x4 windows of 5x5 cells on a 16x16
map). That choice replaced a grid that left cells unread ("Evaluation windows" in docs/method.md); no
denser grid was tried. Denser grids overlap more and weigh central cells more.

Written before any of its runs (2026-12-05). No model is trained: the protocol's own models (seed 0,
read from the cache) of window regression (EMA), lmc-windows and the plain decoder score the validation
part of each of the 10 splits with eval_grid 0 (the registry's), 6 and 12 windows per side (12: every
position of a 5x5 window on a 16x16 map); no test part is scored. Caveat: each model's epoch was kept
for its validation score with the registry's grid, which favours that grid.
Rule: for window regression (the settings search's variant), the grid with the highest median validation
score (SRCC + PLCC) / 2 over the 10 splits is adopted for every token variant if it beats eval_grid 0 by
at least 0.003 in that median and on at least 7 of 10 splits; the next full run then recomputes every
token row (the grid also scores the validation part after each epoch, so it can change the kept epoch).
Otherwise nothing changes and docs/method.md reports the numbers.

About 2 min. Writes docs/explorations/eval_density.csv and prints the verdict. Run from the repository
root with QFM_DATA_ROOT set:

    python docs/explorations/eval_density.py
"""
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from qfm_lib import protocol, study
from qfm_lib.metrics import iqa_metrics, selection_score

MODELS = ("window regression (EMA)", "lmc-windows", "decoder")
GRIDS = (0, 6, 12)
RULE_MODEL = "window regression (EMA)"


def main() -> None:
    inputs = protocol.inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0"))
    rows = []
    for split in range(10):
        val = inputs.parts(split)["val"]
        y = inputs.y[val]
        for name in MODELS:
            model = protocol.trained_model(inputs, name, split)
            for grid in GRIDS:
                start = time.perf_counter()
                pred = replace(model, config=replace(model.config, eval_grid=grid)).predict(inputs.tokens, val)
                m = iqa_metrics(pred, y)
                rows.append({"split": split, "model": name, "eval_grid": grid, "val_score": selection_score(pred, y),
                             "val_plcc": m["plcc"], "val_srcc": m["srcc"], "seconds": time.perf_counter() - start})
    table = pd.DataFrame(rows)
    table.to_csv(Path(__file__).with_suffix(".csv"), index=False, float_format="%.6f")
    print(table.groupby(["model", "eval_grid"], sort=False)[["val_score", "val_plcc", "val_srcc", "seconds"]]
          .median().round(4).to_string())

    score = table[table.model == RULE_MODEL].pivot(index="split", columns="eval_grid", values="val_score")
    gain = score.median() - score[0].median()
    best = int(gain.drop(0).idxmax())
    wins = int((score[best] > score[0]).sum())
    adopted = gain[best] >= 0.003 and wins >= 7
    print(f"\n{RULE_MODEL}: eval_grid {best} against 0: median {gain[best]:+.4f}, higher on {wins} of 10 splits")
    print("rule:", f"eval_grid {best} adopted" if adopted else "not adopted: nothing changes")


if __name__ == "__main__":
    main()
