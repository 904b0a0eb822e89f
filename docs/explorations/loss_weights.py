"""Validation-only check of the loss weights that were set without a search.

The token variants' loss weights (adversarial matching 1.0, distillation 0.5, local-manifold contrast
0.2 and mutual term 0.5) were fixed by hand (docs/method.md, section 2). This script asks whether a
search on validation would have chosen them. Grid and rule, fixed before this script was first run
(2026-11-30): each weight at half, as set and double; the contrast and mutual weights searched jointly;
each searched variant's other settings as in the registry; the validation parts of the same splits as
the settings search (protocol.TUNING_SPLITS, 0-2); the rule of the settings search
(`protocol.tuning_choice`: the highest median validation score (SRCC + PLCC)/2). No test part is
scored. Caveat, as for that search: the validation images of splits 0-2 are test images of other
splits. It chose the hand-set weights except the mutual one (1.0), which the registry has used since
(from the run of 2026-12-04); the committed CSV holds the first run's rows (float32, AVX2 CPU).

The rows are cached like the settings search's (protocol.tune); cold, about 70 min on a 2-core AVX2
CPU. Writes docs/explorations/loss_weights.csv (every row) and prints each search's medians and choice.
Run from the repository root with QFM_DATA_ROOT set:

    python docs/explorations/loss_weights.py
"""
from pathlib import Path

from _settings_check import run_checks  # this folder

SEARCHES = {  # variant: grid (DecoderConfig fields)
    "qfm-iqm (gate+adversarial matching)": {"adv_weight": (0.5, 1.0, 2.0)},
    "lmc-windows": {"contrastive_weight": (0.1, 0.2, 0.4), "mutual_weight": (0.25, 0.5, 1.0)},
    "qfm-iqm + distillation": {"distill_weight": (0.25, 0.5, 1.0)},
}

run_checks(list(SEARCHES.items()), Path(__file__).with_suffix(".csv"))
