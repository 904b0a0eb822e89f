"""Validation-only check of the token settings that other_settings.py left unchecked.

docs/method.md (section 2) discloses that the epoch budget (32 epochs, patience 6: set from a first
10-split run's validation curves), the decoder's depth and the widths of the gate and of the projection
head were fixed by hand, after probes whose test scores on splits 0-2 were read. This script checks
them. Grid and rule, fixed before this script was first run (2026-12-04), as in other_settings.py: one
setting at a time, the others as in the registry; a lower value (where one exists), as set and a higher
value:
  - max_epochs 24 / 32 (as set) / 48, patience as set (6), and layers 1 (as set) / 2, on window
    regression (EMA), the variant of the settings search;
  - gate_hidden 32 / 64 (as set) / 128 on decoder+gate, the plain gated decoder;
  - proj_dim 32 / 64 (as set) / 128, the contrastive projection head, on lmc-windows.
Validation parts of the settings search's splits (protocol.TUNING_SPLITS, 0-2); the settings search's
rule (`protocol.tuning_choice`: the highest median validation score (SRCC + PLCC)/2). No test part is
scored. Caveat, as for that search: the validation images of splits 0-2 are test images of other
splits. A different choice is reported, not applied: applying it changes those variants' rows.
remaining_settings.py checks the rest.

The rows are cached like the settings search's (protocol.tune). Writes
docs/explorations/epochs_and_widths.csv (every row) and prints each search's medians and choice. Run
from the repository root with QFM_DATA_ROOT set:

    python docs/explorations/epochs_and_widths.py
"""
from pathlib import Path

from _settings_check import run_checks  # this folder

SEARCHES = [  # (variant, grid of one DecoderConfig field)
    ("window regression (EMA)", {"max_epochs": (24, 32, 48)}),
    ("window regression (EMA)", {"layers": (1, 2)}),
    ("decoder+gate", {"gate_hidden": (32, 64, 128)}),
    ("lmc-windows", {"proj_dim": (32, 64, 128)}),
]

run_checks(SEARCHES, Path(__file__).with_suffix(".csv"))
