"""Run every notebooks/NN_*.ipynb in order with papermill, in a fresh kernel each.

    python -m qfm_lib.batch --profile full     # what users run; writes figures/ (committed)
    python -m qfm_lib.batch --profile smoke    # tiny data, minimal work; writes build/smoke/

Each notebook declares in its metadata what it writes and its profile overrides:

    "qfm": {"outputs": ["fig_a.png", "tables/t.csv"], "profiles": {"smoke": {"n_images": 40}}}

The batch injects `out_dir` (figures/ for full, build/smoke/figures/ for smoke, so smoke never
overwrites the committed figures) and `profile`, plus the profile's overrides and any -p NAME VALUE.
It stops at the first failing notebook with a non-zero exit naming it, checks that every declared
output exists and was written by this run, and prints a per-notebook time summary; a whole full run
ends with how its tables compare with those committed at git HEAD (`qfm compare`; information only).

Executed copies land in build/<profile>/executed/, each also as a standalone HTML page (NN_*.html,
figures embedded) to read the study without running anything. While a notebook runs, a status line
shows it (i/N), its cells done, the elapsed time and, from the previous run's times
(build/<profile>/times.json), the time left.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .paths import BUILD_DIR, FIGURES_DIR, PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PROFILES = ("full", "smoke")
# Environment of the notebook kernels (a value already set in the environment wins): progress
# bars inside notebooks refresh at most every 10 s, so executed copies stay small.
KERNEL_ENV = {"TQDM_MININTERVAL": "10"}


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


def out_dir_for(profile: str, build_dir: Path | None = None) -> Path:
    return FIGURES_DIR if profile == "full" else (build_dir or BUILD_DIR / profile) / "figures"


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


def duration(sec: float) -> str:
    """42s, 1m32s, 1h05m."""
    sec = int(round(sec))
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m{sec % 60:02d}s"
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m"


class Progress:
    """The running notebook's status: `[batch] 3/6 03_gated_training 12/25 cells, 1m32s`, plus
    `(last run 4m10s, ~2m38s left)` when a previous time is known. On a terminal one line is
    rewritten every second; otherwise a plain line is printed after a cell at most every `every` s."""

    def __init__(self, stream=None, every: float = 30.0):
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self, label: str, expected: float | None) -> None:
        self.label, self.expected = label, expected
        self.start_time = self.printed = time.time()
        self.done, self.cells = 0, 0
        if self.tty:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def line(self) -> str:
        elapsed = time.time() - self.start_time
        text = f"[batch] {self.label} {self.done}/{self.cells or '?'} cells, {duration(elapsed)}"
        if self.expected:
            left = self.expected - elapsed
            text += f" (last run {duration(self.expected)}" + (f", ~{duration(left)} left)" if left >= 1 else ")")
        return text

    def cell_done(self, done: int, cells: int) -> None:
        with self._lock:
            self.done, self.cells = done, cells
            if self.tty:
                self._redraw()
            elif time.time() - self.printed >= self.every:
                self._write(self.line() + "\n")
                self.printed = time.time()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with self._lock:
                self._write("\r\x1b[K")

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._redraw()

    def _redraw(self) -> None:
        self._write("\r\x1b[K" + self.line()[:shutil.get_terminal_size().columns - 1])

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _progress_engine():
    """papermill's nbclient engine, calling on_cell(done, n_cells) after each cell."""
    from papermill.engines import NBClientEngine

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, **kwargs):
            if on_cell is not None:
                complete = nb_man.cell_complete

                def cell_complete(cell, cell_index=None, **kw):
                    complete(cell, cell_index=cell_index, **kw)
                    on_cell(cell_index + 1, len(nb_man.nb.cells))

                nb_man.cell_complete = cell_complete
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    return ProgressEngine


def kernel_config():
    """Kernel manager settings: CurveZMQ-encrypted kernel sockets where pyzmq and the kernel support
    them (ipykernel otherwise warns that the kernel runs over TCP without encryption)."""
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    if zmq.has("curve") and KernelManager.class_traits().get("transport_encryption") is not None:
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    return Config()


@contextmanager
def kernel_environment(values: dict[str, str]):
    """os.environ (which kernels inherit) with `values` added where not already set."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def html_exporter():
    """nbconvert's HTML exporter (JupyterLab look), without its per-page warning that the images
    have no alternative text."""
    from nbconvert import HTMLExporter

    log = logging.getLogger("qfm_lib.batch.html")
    log.setLevel(logging.ERROR)
    return HTMLExporter(log=log)


def write_html(executed: Path, exporter=None) -> Path:
    """A standalone HTML page beside an executed notebook (images embedded)."""
    body, _ = (exporter or html_exporter()).from_filename(str(executed))
    target = executed.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def load_times(path: Path) -> dict[str, float]:
    try:
        times = json.loads(path.read_text())
        return {str(k): float(v) for k, v in times.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def run_batch(profile: str = "full", only: list[str] | None = None, overrides: dict | None = None,
              folder: Path = NOTEBOOK_DIR, build_dir: Path | None = None) -> list[tuple[str, float]]:
    """Run the notebooks; returns [(notebook name, seconds)]. build_dir (default build/<profile>)
    receives executed/ (copies and HTML pages), times.json and, for non-full profiles, figures/."""
    import papermill
    from papermill.engines import papermill_engines

    if profile not in PROFILES:
        raise BatchError(f"unknown profile {profile!r}; profiles: {PROFILES}")
    build_dir = Path(build_dir) if build_dir else BUILD_DIR / profile
    out_dir = out_dir_for(profile, build_dir)
    executed_dir = build_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in notebooks(folder) if not only or any(p.name.startswith(o) for o in only)]
    if not todo:
        raise BatchError(f"no notebooks to run in {folder} (only={only})")
    declared = {k for p in todo for k in papermill_parameters(p)}
    unknown = sorted(set(overrides or {}) - declared)
    if unknown:
        raise BatchError(f"unknown parameter(s) {unknown}: no notebook declares them "
                         f"(declared: {sorted(declared)})")
    papermill_engines.register("qfm-progress", _progress_engine())
    times_file = build_dir / "times.json"
    previous = load_times(times_file)
    known = [previous[p.name] for p in todo if p.name in previous]
    estimate = f"; the last run took {duration(sum(known))}" if len(known) == len(todo) else ""
    print(f"[batch] {len(todo)} notebook(s), profile {profile}{estimate}", flush=True)
    exporter, progress, config = html_exporter(), Progress(), kernel_config()
    times = []
    for index, path in enumerate(todo, 1):
        params = parameters_for(path, profile, out_dir, overrides or {})
        executed = executed_dir / path.name
        label = f"{index}/{len(todo)} {path.stem}"
        print(f"[batch] {label} ({profile}) ...", flush=True)
        start = time.time()
        progress.start(label, previous.get(path.name))
        try:
            with kernel_environment(KERNEL_ENV):
                papermill.execute_notebook(str(path), str(executed), parameters=params,
                                           engine_name="qfm-progress", on_cell=progress.cell_done,
                                           kernel_name="python3", cwd=str(folder), progress_bar=False,
                                           log_output=False, request_save_on_cell_execute=False,
                                           config=config)
        except Exception as err:
            progress.stop()
            pages = [executed]
            try:
                pages.append(write_html(executed, exporter))
            except Exception:  # the notebook's failure is the error to report
                pass
            raise BatchError(f"notebook {path.name} failed ({type(err).__name__}); executed copy with "
                             f"the traceback: {' and '.join(map(str, pages))}\n{err}") from err
        finally:
            progress.stop()
        write_html(executed, exporter)
        stale = []
        for rel in notebook_meta(path).get("outputs", []):
            target = out_dir / rel
            if not target.is_file() or target.stat().st_mtime < start - 1:
                stale.append(str(target))
        if stale:
            raise BatchError(f"notebook {path.name} did not write its declared outputs: {stale}")
        times.append((path.name, time.time() - start))
        previous[path.name] = times[-1][1]
        times_file.write_text(json.dumps(previous, indent=1, sort_keys=True) + "\n")
        print(f"[batch] {label} done in {duration(times[-1][1])}", flush=True)
    width = max(len(n) for n, _ in times)
    print(f"\n[batch] time per notebook (executed copies and HTML pages in {executed_dir})")
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
    if args.profile == "full" and not args.only and not args.p:
        print(f"\n{reproduction_summary()}")
    return 0


def reproduction_summary() -> str:
    """How the tables a full run wrote compare with those committed at git HEAD (`qfm compare`):
    information, not a failure, since another machine may differ in the last digits."""
    from .reproduce import DEFAULT_TOLERANCE, compare_with_git

    try:
        _, text, agree = compare_with_git()
    except (FileNotFoundError, ValueError) as err:
        return f"[batch] not compared with the committed tables: {err}"
    verdict = "reproduced" if agree else "NOT all reproduced"
    return (f"[batch] tables against those committed at git HEAD ({verdict} within {DEFAULT_TOLERANCE:g}; "
            f"`qfm compare` for details):\n{text}")


if __name__ == "__main__":
    sys.exit(main())
