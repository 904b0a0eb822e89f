"""Training benchmark: the protocol's result rows computed by 1 worker process and by N (default:
the machine's cores), each into its own empty results cache. Prints seconds, rows/minute, the
speed-up (goal >= 1.7 on 2 cores) and whether both runs gave the same numbers.

Features and token maps come from the project's cache (extracted first if missing).

Usage: python benchmarks/bench_training.py [--variants decoder "decoder+gate"] [--splits 4] [--jobs 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import pandas as pd

from qfm_lib import protocol
from qfm_lib.study import load_study_data


def timed_rows(inputs, variants: list[str], n_splits: int, n_jobs: int) -> tuple[float, pd.DataFrame]:
    with tempfile.TemporaryDirectory(prefix="qfm-bench-rows-") as tmp:
        os.environ["QFM_CACHE_DIR"] = tmp  # rows only: the inputs are already in memory
        start = time.perf_counter()
        rows = protocol.evaluate(inputs, variants, n_splits=n_splits, progress=False, n_jobs=n_jobs)
        return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=["decoder", "decoder+gate"])
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    study = load_study_data("livec", "tf_efficientnet_lite0")
    inputs = protocol.inputs_from_study(study, progress=False)
    n_rows = len(args.variants) * args.splits
    print(f"{n_rows} rows ({', '.join(args.variants)} x {args.splits} splits), LIVEC, {os.cpu_count()} CPUs")
    serial, a = timed_rows(inputs, args.variants, args.splits, 1)
    parallel, b = timed_rows(inputs, args.variants, args.splits, args.jobs)
    same = a.drop(columns="fit_seconds").equals(b.drop(columns="fit_seconds"))
    print(f"1 worker             : {serial:7.1f} s  ({60 * n_rows / serial:.1f} rows/min)")
    print(f"{args.jobs} workers            : {parallel:7.1f} s  ({60 * n_rows / parallel:.1f} rows/min)")
    print(f"speed-up             : {serial / parallel:7.2f}  (goal >= 1.7 on 2 cores)")
    print(f"same numbers         : {same}")


if __name__ == "__main__":
    main()
