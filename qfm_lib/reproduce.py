"""Did a rerun reproduce the committed tables? Compare two folders of the batch's CSV tables, column by
column, within a tolerance: `qfm compare` (after `make figures`, the committed tables of git HEAD against
the freshly written figures/tables/).

Rows are matched by their identifying columns (the first text and integer columns: variant, split,
metric, ...) when those identify them, else by position. Timing columns (`*seconds*`) are skipped: they
measure the machine, not the result."""
from __future__ import annotations

import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

from .paths import FIGURES_DIR, PROJECT_ROOT

SKIPPED_COLUMNS = ("seconds",)
TABLES_DIR = FIGURES_DIR / "tables"
DEFAULT_TOLERANCE = 1e-3
# max_diff: the largest |committed - new| / max(1, |committed|), absolute for values within [-1, 1]
# (PLCC, SRCC, p-values), relative above (RMSE on the MOS scale, counts)
COLUMNS = ["table", "column", "n", "max_diff", "at", "note"]


def git_tables(rev: str, dest: Path, folder: str = "figures/tables", repo: Path | None = None) -> Path:
    """Extract the tables of `folder` as committed at `rev` under `dest`; returns their folder."""
    repo = Path(repo or PROJECT_ROOT)
    if rev.startswith("-"):
        raise ValueError(f"{rev!r} is no git revision (git would read it as an option)")
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, folder], check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        detail = err.stderr.decode().strip() if isinstance(err, subprocess.CalledProcessError) else err
        raise ValueError(f"git archive {rev} {folder} failed in {repo}: {detail}") from err
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # 3.10.12+
    return Path(dest) / folder


def compare_with_git(rev: str = "HEAD", tables: Path = TABLES_DIR, tolerance: float = DEFAULT_TOLERANCE,
                     repo: Path | None = None) -> tuple[pd.DataFrame, str, bool]:
    """compare_tables of the tables committed at `rev` and `tables`, with report()'s text and verdict."""
    with tempfile.TemporaryDirectory(prefix="committed-tables-") as tmp:
        comparison = compare_tables(git_tables(rev, Path(tmp), repo=repo), tables)
    return (comparison, *report(comparison, tolerance))


def _matched(ref: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool] | None:
    """Both tables with their rows in the same order, and whether they are indexed by label: by the
    first of the shared text and integer columns (in table order: variant, split, ...) that identify the
    committed rows one to one, when they identify the new rows the same way; else by position when the
    lengths agree; None when neither works."""
    shared = [c for c in ref.columns if c in new.columns]
    candidates = [c for c in shared if not pd.api.types.is_float_dtype(ref[c])]
    for k in range(1, len(candidates) + 1):
        keys = candidates[:k]
        a = ref.set_index(keys)
        if a.index.is_unique:
            b = new.set_index(keys)
            if b.index.is_unique and set(a.index) == set(b.index):
                return a, b.loc[a.index], True
            break
    if len(ref) == len(new):
        return ref.reset_index(drop=True), new.reset_index(drop=True), False
    return None


def _row(name: str, column: str = "", n: int = 0, diff: float = np.nan, at: str = "", note: str = "") -> dict:
    return dict(zip(COLUMNS, (name, column, n, diff, at, note)))


def compare_table(ref: pd.DataFrame, new: pd.DataFrame, name: str = "") -> pd.DataFrame:
    """One row per column the two tables share: for numbers the largest difference (max_diff: absolute
    within [-1, 1], relative above) and where it is (row label or position); a note for what does not
    agree otherwise (text that differs, NaN in one table only, rows that cannot be matched)."""
    matched = _matched(ref, new)
    if matched is None:
        rows = [_row(name, n=len(new), note=f"rows differ ({len(ref)} committed, {len(new)} new)")]
        return pd.DataFrame(rows)
    a, b, labelled = matched
    out = []
    for col in a.columns:
        if col not in b.columns or any(s in col for s in SKIPPED_COLUMNS):
            continue
        if not (pd.api.types.is_numeric_dtype(a[col]) and pd.api.types.is_numeric_dtype(b[col])):
            x, y = a[col].to_numpy(object), b[col].to_numpy(object)
            differs = int((~((x == y) | (pd.isna(x) & pd.isna(y)))).sum())
            out.append(_row(name, col, len(a), note=f"text differs in {differs} rows" if differs else ""))
            continue
        x, y = a[col].to_numpy(float), b[col].to_numpy(float)
        with np.errstate(invalid="ignore"):
            diff = np.abs(x - y) / np.maximum(1.0, np.abs(x))
        diff[x == y] = 0.0  # equal infinities too
        diff[(np.isinf(x) | np.isinf(y)) & (x != y)] = np.inf  # an infinity against anything else: no match
        nan_mismatch = int((np.isnan(x) != np.isnan(y)).sum())
        compared = ~np.isnan(diff)
        worst = int(np.argmax(np.where(compared, diff, -1.0)))
        label = a.index[worst] if labelled else worst
        out.append(_row(name, col, int(compared.sum()), float(diff[worst]) if compared.any() else np.nan,
                        " / ".join(map(str, label)) if isinstance(label, tuple) else str(label),
                        f"NaN in one table only: {nan_mismatch} rows" if nan_mismatch else ""))
    if not out:  # every column identifies the rows (e.g. a list of pairs), and both have the same rows
        out.append(_row(name, "(rows)", len(a), 0.0))
    return pd.DataFrame(out, columns=COLUMNS)


def compare_tables(reference: Path, candidate: Path) -> pd.DataFrame:
    """compare_table for every CSV in either folder; tables missing from one side get a note."""
    reference, candidate = Path(reference), Path(candidate)
    for folder in (reference, candidate):
        if not folder.is_dir():
            raise FileNotFoundError(f"no tables folder {folder}")
    names = sorted({p.name for p in reference.glob("*.csv")} | {p.name for p in candidate.glob("*.csv")})
    parts = []
    for name in names:
        ref, new = reference / name, candidate / name
        if not (ref.is_file() and new.is_file()):
            side = "committed" if not ref.is_file() else "new"
            parts.append(pd.DataFrame([_row(name, note=f"missing from the {side} tables")]))
            continue
        tables = [_read_table(path) for path in (ref, new)]
        unreadable = [t for t in tables if isinstance(t, str)]
        if unreadable:
            parts.append(pd.DataFrame([_row(name, note="; ".join(unreadable))]))
            continue
        parts.append(compare_table(*tables, name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def _read_table(path: Path) -> pd.DataFrame | str:
    """The CSV table at `path`, or why it cannot be read (naming it), so that one bad table does not stop
    the comparison of the others."""
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        return f"cannot read {path} ({type(err).__name__}: {str(err).strip()[:120]})"


def report(comparison: pd.DataFrame, tolerance: float) -> tuple[str, bool]:
    """A text report of the columns beyond `tolerance` (and of every note), and whether all agree."""
    if comparison.empty:
        return "no tables to compare: neither folder holds a CSV table", False
    beyond = comparison[(comparison["max_diff"] > tolerance) | (comparison["note"] != "")]
    n_tables = comparison["table"].nunique()
    head = (f"{n_tables} tables, {len(comparison)} columns compared; largest difference "
            f"{comparison['max_diff'].max():.3g}; {len(beyond)} beyond {tolerance:g} or not comparable")
    body = beyond.to_string(index=False, max_colwidth=60, float_format="{:.3g}".format) if len(beyond) else ""
    return head + ("\n" + body if body else ""), beyond.empty
