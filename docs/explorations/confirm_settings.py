"""Preregistered confirmation, on other splits, of the three changes remaining_settings.py preferred.

remaining_settings.py (validation parts of splits 0-2) preferred three values to the registry's, and
reported them without applying them: batches of 16 images instead of 32 (window regression), 4
adversarial candidates instead of 2 and a partner gap quantile of 0.1 instead of 0.05 (qfm-iqm).
Reading a search's winner off the same splits that chose it overstates it, so this script asks the
same questions on the validation parts of splits 3-5, which took no part in any earlier search or
check. Design and rule, fixed and committed before this script was first run (2026-12-04):
  - each pair, the registry's value first (so that a tie keeps it): batch_images 32 / 16 on window
    regression (EMA); adv_candidates 2 / 4 and gap_quantile 0.05 / 0.1 on qfm-iqm (gate+adversarial
    matching), its matching strength chosen per row on validation as in its protocol rows;
  - the settings search's rule (`protocol.tuning_choice`: the higher median validation score
    (SRCC + PLCC)/2 over splits 3-5); no test part is scored;
  - a value chosen here is adopted by the registry in the next full run, which recomputes the rows it
    changes: batch_images for every token variant (the settings search's shared settings are chosen
    on window regression the same way), adv_candidates and gap_quantile for qfm-iqm and qfm-iqm +
    distillation, the only variants that mine partners. A value not chosen here stays as it is.
Caveat, as for every search here: the validation images of splits 3-5 are test images of other splits.

The rows are cached like the settings search's (protocol.tune). Writes
docs/explorations/confirm_settings.csv (every row) and prints each search's medians and choice. Run
from the repository root with QFM_DATA_ROOT set:

    python docs/explorations/confirm_settings.py
"""
from pathlib import Path

from _settings_check import run_checks  # this folder

QFM_IQM = "qfm-iqm (gate+adversarial matching)"
SPLITS = (3, 4, 5)
SEARCHES = [  # (variant, grid of one DecoderConfig field), the registry's value first
    ("window regression (EMA)", {"batch_images": (32, 16)}),
    (QFM_IQM, {"adv_candidates": (2, 4)}),
    (QFM_IQM, {"gap_quantile": (0.05, 0.1)}),
]

run_checks(SEARCHES, Path(__file__).with_suffix(".csv"), SPLITS)
