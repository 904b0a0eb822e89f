"""Notebook-batch benchmark: wall time per notebook and peak memory of one batch run.

  warm (default): the project's cache (.cache/ or $QFM_CACHE_DIR), as `make figures` finds it
  --cold: a fresh, empty cache in a temporary folder (features, BRISQUE and result rows recomputed)

Peak memory is the largest resident set of any notebook kernel (they are child processes) and of
this process. The full profile takes 1.5-3 minutes warm on 2 cores (2 notebooks at once; 5.4 min one
at a time on an AVX2-only CPU); cold, 62-65 minutes from an empty cache with native bfloat16 (AVX512-BF16;
measured 2026-12-05/06 with the two-block learned tail, whose rows are a fifth to a quarter of it; 44 minutes
before the tail) and about 3 hours on an AVX2-only CPU with the settings of 2026-11-29 (docs/performance.md,
"The machine matters"). It writes figures/ as `make figures` does.

Usage: python benchmarks/bench_batch.py [--profile full|smoke] [--cold] [--only 01 02] [--jobs N]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

from qfm_lib import batch
from qfm_lib.paths import cache_dir


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=batch.PROFILES)
    parser.add_argument("--cold", action="store_true", help="run on a fresh, empty cache")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    parser.add_argument("--jobs", type=int, default=None, help="notebooks at once (default: the batch's, 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qfm-cold-cache-") as tmp:
        if args.cold:
            os.environ["QFM_CACHE_DIR"] = tmp  # the kernels inherit it
        found_empty = not any(cache_dir().glob("*/*"))
        start = time.time()
        try:
            times = batch.run_batch(args.profile, args.only, jobs=args.jobs)
        except batch.BatchError as err:
            print(f"bench_batch: {err}", file=sys.stderr)
            return 1
        wall = time.time() - start

    mode = ("cold (fresh cache)" if args.cold else f"project cache {cache_dir()}, "
            + ("found empty: cold" if found_empty else "warm or partly"))
    width = max(len(name) for name, _ in times)
    jobs = args.jobs or batch.default_jobs()
    print(f"\nbench_batch: profile {args.profile}, {mode}, {os.cpu_count()} CPUs, {jobs} notebook(s) at once")
    for name, sec in times:
        print(f"  {name:<{width}}  {sec:7.1f} s")
    print(f"  {'notebooks':<{width}}  {sum(s for _, s in times):7.1f} s")
    print(f"  {'wall':<{width}}  {wall:7.1f} s")
    print(f"peak RSS: kernels {peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB, "
          f"batch process {peak_rss_mib(resource.RUSAGE_SELF):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
