"""The loop shared by this folder's validation-only settings checks: each search through
`protocol.tune` (validation parts only, of protocol.TUNING_SPLITS unless told; rows cached), its
medians and its choice (`protocol.tuning_choice`) printed against the registry's value, every row
written to a CSV."""
from pathlib import Path

import pandas as pd

from qfm_lib import protocol
from qfm_lib.study import setup_notebook


def run_checks(searches: list[tuple[str, dict]], out: Path, splits=protocol.TUNING_SPLITS) -> pd.DataFrame:
    """searches: (variant, grid of DecoderConfig fields), each on the validation parts of `splits`.
    Returns every row, also written to `out`."""
    _, inputs = setup_notebook("livec", "tf_efficientnet_lite0")
    tables = []
    for variant, grid in searches:
        table = protocol.tune(inputs, grid, splits, variant=variant)
        keys = protocol.setting_columns(table)
        medians = table.groupby(keys, sort=False)[["val_score", "val_plcc", "val_srcc", "fit_seconds"]].median()
        choice = protocol.tuning_choice(table)
        used = {k: getattr(inputs.variant(variant).config, k) for k in grid}
        as_set = table.loc[(table[list(used)] == pd.Series(used)).all(axis=1), "val_score"].median()
        verdict = ("the same" if choice == used else
                   "a tie, broken in grid order" if as_set == medians["val_score"].max() else "DIFFERENT")
        print(f"\n{variant}: medians over splits {list(splits)}\n{medians.round(4)}")
        print(f"chosen on validation: {choice}; the registry uses {used}: {verdict}")
        tables.append(table.assign(variant=variant))
    rows = pd.concat(tables, ignore_index=True)
    rows.to_csv(out, index=False)
    print(f"wrote {out}")
    return rows
