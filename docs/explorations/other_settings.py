"""Validation-only check of three settings that were fixed by hand after probes whose test scores were read.

docs/method.md (section 2) discloses that some DecoderConfig defaults were set after untuned probes
whose TEST scores on splits 0-2 were read, and never searched on validation. This script checks three
of them. Grid and rule, fixed before this script was first run (2026-12-04): one setting at a time, the
others as in the registry; each at a lower value, as set and a higher value:
  - dropout of the decoder (0.0, 0.1 as set, 0.2) and training windows per image per step
    (n_windows 1, 2 as set, 4; 2 was chosen for CPU time), on window regression (EMA), the variant of
    the settings search;
  - the contrastive temperature of lmc-windows (0.1, 0.2 as set, 0.4).
Validation parts of the settings search's splits (protocol.TUNING_SPLITS, 0-2); the settings search's
rule (`protocol.tuning_choice`: the highest median validation score (SRCC + PLCC)/2). No test part is
scored. Caveat, as for that search: the validation images of splits 0-2 are test images of other
splits. A different choice is reported, not applied: applying it changes those variants' rows.
Left for epochs_and_widths.py: the epoch budget, the depth and the widths; remaining_settings.py
checks the rest.

The rows are cached like the settings search's (protocol.tune). Writes
docs/explorations/other_settings.csv (every row) and prints each search's medians and choice. Run from
the repository root with QFM_DATA_ROOT set:

    python docs/explorations/other_settings.py
"""
from pathlib import Path

from _settings_check import run_checks  # this folder

SEARCHES = [  # (variant, grid of one DecoderConfig field)
    ("window regression (EMA)", {"dropout": (0.0, 0.1, 0.2)}),
    ("window regression (EMA)", {"n_windows": (1, 2, 4)}),
    ("lmc-windows", {"temperature": (0.1, 0.2, 0.4)}),
]

run_checks(SEARCHES, Path(__file__).with_suffix(".csv"))
