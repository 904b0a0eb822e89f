"""Validation-only check of the token settings that the earlier checks left unchecked.

docs/method.md (section 2) lists the DecoderConfig settings that were fixed by hand and never checked
on validation after other_settings.py and epochs_and_widths.py: the attention heads, the patience,
the weight decay, the batch size, the EMA decay, the intra-class weight, the number of adversarial
candidates and the partner rule's quantiles. This script checks them. Grid and rule, fixed before this
script was first run (2026-12-04), as in the earlier checks: one setting at a time, the others as in
the registry; a lower value, as set and a higher value:
  - heads 2 / 4 (as set) / 8, patience 4 / 6 (as set) / 9, weight_decay 1e-3 / 1e-2 (as set) / 1e-1,
    batch_images 16 / 32 (as set) / 64 and ema_decay 0.98 / 0.99 (as set) / 0.995, on window
    regression (EMA), the variant of the settings search;
  - intra_weight 0.5 / 1.0 (as set) / 2.0 on lmc-windows (its ablation sets it to 0);
  - adv_candidates 1 / 2 (as set) / 4, gap_quantile 0.02 / 0.05 (as set) / 0.1 and dist_quantile
    0.7 / 0.8 (as set) / 0.9 on qfm-iqm (gate+adversarial matching), the only variant that mines
    partners; its matching strength is chosen on validation inside each row, as in its protocol rows.
Validation parts of the settings search's splits (protocol.TUNING_SPLITS, 0-2); the settings search's
rule (`protocol.tuning_choice`: the highest median validation score (SRCC + PLCC)/2). No test part is
scored. Caveat, as for that search: the validation images of splits 0-2 are test images of other
splits. A different choice is reported, not applied: applying it changes those variants' rows.

The rows are cached like the settings search's (protocol.tune). Writes
docs/explorations/remaining_settings.csv (every row) and prints each search's medians and choice. Run
from the repository root with QFM_DATA_ROOT set:

    python docs/explorations/remaining_settings.py
"""
from pathlib import Path

from _settings_check import run_checks  # this folder

QFM_IQM = "qfm-iqm (gate+adversarial matching)"
SEARCHES = [  # (variant, grid of one DecoderConfig field)
    ("window regression (EMA)", {"heads": (2, 4, 8)}),
    ("window regression (EMA)", {"patience": (4, 6, 9)}),
    ("window regression (EMA)", {"weight_decay": (1e-3, 1e-2, 1e-1)}),
    ("window regression (EMA)", {"batch_images": (16, 32, 64)}),
    ("window regression (EMA)", {"ema_decay": (0.98, 0.99, 0.995)}),
    ("lmc-windows", {"intra_weight": (0.5, 1.0, 2.0)}),
    (QFM_IQM, {"adv_candidates": (1, 2, 4)}),
    (QFM_IQM, {"gap_quantile": (0.02, 0.05, 0.1)}),
    (QFM_IQM, {"dist_quantile": (0.7, 0.8, 0.9)}),
]

run_checks(SEARCHES, Path(__file__).with_suffix(".csv"))
