"""Does a change's paired validation difference track its baseline's seed luck? (No training; reads the
CSVs of the four two-seed checks: rank_loss.py, two_scales.py, early_stages.py and learned_tail.py.)

For each check and each (split, seed) pair: the baseline's deviation from the mean of its two seeds on
that split, and the change's paired difference d (change minus baseline, same split and seed). Prints
their Pearson correlation per check (8 pairs each). A negative correlation is regression to the mean:
a baseline seed that drew a low score is beaten by chance. docs/method.md ("Why one seed misleads")
quotes the numbers. Run from the repository root:

    python docs/explorations/seed_luck.py
"""
from pathlib import Path

import pandas as pd
from scipy.stats import pearsonr

HERE = Path(__file__).parent
SEEDS = (0, 1)


def paired(baseline: pd.DataFrame, change: pd.DataFrame) -> pd.DataFrame:
    """baseline, change: (split x seed) validation scores -> each pair's deviation and difference."""
    deviation = baseline.sub(baseline.mean(axis=1), axis=0)
    return pd.DataFrame({"deviation": deviation.stack(), "d": (change - baseline).stack()})


def checks() -> dict[str, pd.DataFrame]:
    rank = pd.read_csv(HERE / "rank_loss.csv").pivot_table(index="split", columns=["weight", "seed"],
                                                            values="val_score")
    out = {f"ranking term, weight {w}": paired(rank[0.0], rank[w]) for w in (0.5, 1.0, 2.0)}
    tail = pd.read_csv(HERE / "learned_tail.csv").pivot_table(index="split", columns=["rate", "seed"],
                                                                values="val_score")
    out |= {f"learned tail, rate {r}": paired(tail[0.0], tail[r]) for r in (0.03, 0.1, 0.3)}
    for name, csv, change, base in [("second scale", "two_scales.csv", "two scales", "full"),
                                    ("early stages", "early_stages.csv", "early", "cached")]:
        table = pd.read_csv(HERE / csv).set_index("split")
        pick = lambda prefix: pd.DataFrame({s: table[f"{prefix} s{s}"] for s in SEEDS})  # noqa: E731
        out[name] = paired(pick(base), pick(change))
    return out


if __name__ == "__main__":
    for name, pairs in checks().items():
        r = pearsonr(pairs["deviation"], pairs["d"])[0]
        print(f"{name:28s} Pearson r(baseline's deviation, d) = {r:+.2f} over {len(pairs)} pairs")
