"""Validation-only check: does a learned tail of three or four blocks raise the tail variant further?

The variant "window regression + learned tail" learns a copy of Lite0's last layers: block5's last block,
block6 and the head (two blocks, tail_blocks 2, adopted after docs/explorations/deeper_tail.py, which
gained a mean +0.0113 over one block on validation, and the gain carried over to splits that check never
saw). Stage 5 has four 192-channel blocks at stride 32, the last three with a skip, so the tail can start
one or two blocks earlier still: tail_blocks 3 reads the output of block5's second block and learns its
third and fourth blocks, block6 and the head (+0.48 M weights, 1.97 M in all); tail_blocks 4 reads the
output of block5's first block (+0.96 M, 2.45 M). qfm_lib/tail.py builds either (tail.tail_tokens
appends the input to the token maps, once per depth, cached); nothing else changes: rate 1, lr 3e-4 and
every other setting of the registry.

Written before any of its runs (2026-12-05, 17:35). On the validation parts of splits 6-9 (the splits
of learned_tail.py, tail_rate.py and deeper_tail.py) with training seeds 0 and 1; no test part is
scored and no model is kept. The baseline, the variant as it is (two blocks), is refitted here; its
seed-0 fits should equal the committed protocol rows (figures/tables/06_results_per_split.csv).
Rule: d_n = validation score (SRCC + PLCC) / 2 with n blocks minus with two, per (split, seed), 8
pairs. The depth with the highest mean d_n is adopted if that mean is >= 0.005 and d_n > 0 on at least
6 of the 8 pairs (the rule of the earlier tail checks). Adopted means: protocol._TAIL_BLOCKS becomes n
and the next full run recomputes the tail's rows and what is built on them. Otherwise nothing changes
and docs/method.md reports the numbers.

Run (2026-12-05, 17:07-17:54): the three tail inputs took 75 s each (PyTorch, 13 images/s); the 24 fits
40.9 min, two at a time. The refitted seed-0 baselines equal the committed protocol rows exactly (largest
difference 0), so the library's generalisation to n blocks left the two-block tail's numbers unchanged.
Median validation score 0.8476 (two blocks), 0.8511 (three), 0.8448 (four); mean paired d +0.0018 for
three blocks (positive on 3 of 8, -0.005 to +0.012) and -0.0047 for four (2 of 8, -0.023 to +0.020). Rule
not met: the tail keeps two blocks. The depth direction is exhausted here: the gain of the second block
(+0.0113, deeper_tail.py) did not continue, and four blocks scattered most (best epochs 10.5 against 15.5).

Writes docs/explorations/third_block.csv (every fit) and prints the verdict. Run from the repository root
with QFM_DATA_ROOT set (24 fits and two extractions, about 35 min on 2 cores):

    python docs/explorations/third_block.py
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from qfm_lib import protocol, study

from _window_regression import paired_rule, validation_scores  # this folder

VARIANT = "window regression + learned tail"
DEPTHS = (2, 3, 4)  # tail_blocks; 2 is the variant's
SPLITS = (6, 7, 8, 9)
SEEDS = (0, 1)
COMMITTED = Path("figures/tables/06_results_per_split.csv")


def validation_fit(inputs: protocol.ProtocolInputs, split: int, seed: int, blocks: int) -> dict:
    return {"split": split, "seed": seed, "blocks": blocks,
            **validation_scores(inputs, split, seed, VARIANT, tail_blocks=blocks)}


def main() -> None:
    inputs = protocol.inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0"))
    base = inputs.variant(VARIANT).config
    if base.tail_blocks != DEPTHS[0]:
        raise SystemExit(f"the registry's tail has {base.tail_blocks} blocks; this check compares against {DEPTHS[0]}")
    for blocks in DEPTHS:  # tail.tail_tokens: computed once per depth, cached
        inputs.tokens_for(replace(base, tail_blocks=blocks))

    jobs = [(split, seed, blocks) for blocks in DEPTHS for split in SPLITS for seed in SEEDS]
    with protocol.row_workers():  # fresh workers after a source edit; loky retiring a grown worker is no fault
        rows = pd.DataFrame(Parallel(n_jobs=2, backend="loky", verbose=5)(
            delayed(validation_fit)(inputs, *job) for job in jobs)).sort_values(["split", "seed", "blocks"])
    rows.to_csv(Path(__file__).with_suffix(".csv"), index=False, float_format="%.6f")

    committed = pd.read_csv(COMMITTED).query("variant == @VARIANT").set_index("split")["val_score"]
    seed0 = rows.query("seed == 0 and blocks == @DEPTHS[0]").set_index("split")["val_score"]
    print("seed-0 baselines against the committed rows, largest difference: "
          f"{np.abs(seed0 - committed.loc[seed0.index]).max():.2e}")
    print(rows.groupby("blocks")[["val_score", "val_plcc", "val_srcc", "best_epoch"]].median().round(4).to_string())
    paired_rule(rows, "blocks", DEPTHS[0], "d", "adopted")


if __name__ == "__main__":
    main()
