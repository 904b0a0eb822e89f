"""Validation-only check: does the learned tail prefer other shared settings than window regression's?

The variant `window regression + learned tail` (qfm_lib/tail.py; its rate chosen by learned_tail.py)
takes the three shared settings that the study's search chose for plain window regression (window,
decoder width, learning rate: protocol.TUNED). learned_tail.py's text said the search would be rerun
with the tail; this is that rerun, with the search's own grid, splits and rule.

Written before any of its runs (2026-12-05). protocol.tune on `window regression + learned tail` with
protocol.TUNING_GRID on the validation parts of protocol.TUNING_SPLITS (0-2), training seed 0; no test
part is scored. Rule (protocol.tuning_choice): the highest median validation score (SRCC + PLCC) / 2
over the three splits; ties go to the first in grid order. If it chooses protocol.TUNED, nothing
changes. Otherwise the tail variant takes the chosen settings in the next full run (its rows only; the
other token variants keep the search of window regression), and docs/method.md says so.

About 25-30 min on 2 cores (24 fits; 7x7 windows cost about twice 5x5). Writes
docs/explorations/tail_settings.csv (every fit) and prints the verdict. Run from the repository root with
QFM_DATA_ROOT set:

    python docs/explorations/tail_settings.py
"""
from pathlib import Path

from qfm_lib import protocol, study

VARIANT = "window regression + learned tail"


def main() -> None:
    inputs = protocol.inputs_from_study(study.load_study_data("livec", "tf_efficientnet_lite0"))
    table = protocol.tune(inputs, variant=VARIANT)
    table.to_csv(Path(__file__).with_suffix(".csv"), index=False, float_format="%.6f")
    keys = protocol.setting_columns(table)
    medians = table.groupby(keys, sort=False)[["val_score", "val_plcc", "val_srcc", "fit_seconds"]].median()
    print(medians.round(4).to_string())
    choice = protocol.tuning_choice(table)
    same = all(protocol.TUNED[k] == v for k, v in choice.items())
    print(f"\nrule: {choice} ({'the same as' if same else 'not'} protocol.TUNED {protocol.TUNED}); "
          + ("nothing changes" if same else "the tail variant takes these settings in the next full run"))


if __name__ == "__main__":
    main()
