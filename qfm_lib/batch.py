"""Run every notebooks/NN_*.ipynb in order with papermill, in a fresh kernel each.

    python -m qfm_lib.batch --profile full     # what users run; writes figures/ (committed)
    python -m qfm_lib.batch --profile smoke    # tiny data, minimal work; writes build/smoke/

Each notebook declares in its metadata what it writes and its profile overrides:

    "qfm": {"outputs": ["fig_a.png", "tables/t.csv"], "profiles": {"smoke": {"n_images": 40}}}

The batch injects `out_dir` (figures/ for full, build/smoke/figures/ for smoke, so smoke never
overwrites the committed figures) and `profile`, plus the profile's overrides and any -p NAME VALUE.
It stops at the first failing notebook with a non-zero exit naming it, checks that every declared
output exists and was written by this run, and prints a per-notebook time summary.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

from .paths import BUILD_DIR, FIGURES_DIR, PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PROFILES = ("full", "smoke")


class BatchError(RuntimeError):
    pass


def notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """notebooks/NN_*.ipynb in numeric order."""
    found = [p for p in folder.glob("[0-9][0-9]_*.ipynb")]
    return sorted(found, key=lambda p: (int(p.name[:2]), p.name))


def notebook_meta(path: Path) -> dict:
    return json.loads(path.read_text()).get("metadata", {}).get("qfm", {})


def papermill_parameters(path: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(path))


def out_dir_for(profile: str) -> Path:
    return FIGURES_DIR if profile == "full" else BUILD_DIR / profile / "figures"


def parameters_for(path: Path, profile: str, out_dir: Path, overrides: dict) -> dict:
    """Parameters to inject: profile overrides from the notebook metadata, then the user's."""
    declared = papermill_parameters(path)
    params = {"out_dir": str(out_dir), "profile": profile}
    params.update(notebook_meta(path).get("profiles", {}).get(profile, {}))
    params.update({k: v for k, v in overrides.items() if k in declared})
    unknown = [k for k in params if k not in declared]
    if unknown:
        raise BatchError(f"{path.name}: unknown parameter(s) {unknown}; its parameters cell "
                         f"declares {sorted(declared)}")
    return params


def run_batch(profile: str = "full", only: list[str] | None = None, overrides: dict | None = None,
              folder: Path = NOTEBOOK_DIR) -> list[tuple[str, float]]:
    import papermill

    if profile not in PROFILES:
        raise BatchError(f"unknown profile {profile!r}; profiles: {PROFILES}")
    out_dir = out_dir_for(profile)
    executed_dir = BUILD_DIR / profile / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in notebooks(folder) if not only or any(p.name.startswith(o) for o in only)]
    if not todo:
        raise BatchError(f"no notebooks to run in {folder} (only={only})")
    declared = {k for p in todo for k in papermill_parameters(p)}
    unknown = sorted(set(overrides or {}) - declared)
    if unknown:
        raise BatchError(f"unknown parameter(s) {unknown}: no notebook declares them "
                         f"(declared: {sorted(declared)})")
    times = []
    for path in todo:
        params = parameters_for(path, profile, out_dir, overrides or {})
        print(f"[batch] {path.name} ({profile}) ...", flush=True)
        start = time.time()
        try:
            papermill.execute_notebook(str(path), str(executed_dir / path.name), parameters=params,
                                       kernel_name="python3", cwd=str(folder), progress_bar=False,
                                       log_output=False, request_save_on_cell_execute=False)
        except Exception as err:
            raise BatchError(f"notebook {path.name} failed ({type(err).__name__}); executed copy with "
                             f"the traceback: {executed_dir / path.name}\n{err}") from err
        stale = []
        for rel in notebook_meta(path).get("outputs", []):
            target = out_dir / rel
            if not target.is_file() or target.stat().st_mtime < start - 1:
                stale.append(str(target))
        if stale:
            raise BatchError(f"notebook {path.name} did not write its declared outputs: {stale}")
        times.append((path.name, time.time() - start))
        print(f"[batch] {path.name} done in {times[-1][1]:.1f} s", flush=True)
    width = max(len(n) for n, _ in times)
    print("\n[batch] time per notebook")
    for name, sec in times:
        print(f"  {name:<{width}}  {sec:7.1f} s")
    print(f"  {'total':<{width}}  {sum(s for _, s in times):7.1f} s")
    return times


def _literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=PROFILES)
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter in every notebook that declares it")
    args = parser.parse_args(argv)
    try:
        run_batch(args.profile, args.only, {k: _literal(v) for k, v in args.p})
    except BatchError as err:
        print(f"[batch] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
