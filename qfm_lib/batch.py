"""Run every notebooks/NN_*.ipynb with papermill, each in a fresh kernel, two at a time.

    python -m qfm_lib.batch --profile full     # what users run; writes figures/ (committed)
    python -m qfm_lib.batch --profile smoke    # tiny data, minimal work; writes build/smoke/
    python -m qfm_lib.batch --jobs 1           # one notebook after another, in numeric order

Each notebook declares in its metadata what it writes, the earlier notebooks whose cached results
(result rows, kept models) it reuses, and its profile overrides:

    "qfm": {"outputs": ["fig_a.png", "tables/t.csv"], "needs": ["03"], "profiles": {"smoke": {"n_images": 40}}}

A notebook starts once the notebooks it needs have finished; among those ready, the one with the
longest chain of work after it (last run's times) starts first. Two notebooks that load the same
features wait for one extraction (a lock per cache entry); "needs" keeps two notebooks from
training the same result rows at once.

The batch injects `out_dir` (figures/ for full, build/smoke/figures/ for smoke, so smoke never
overwrites the committed figures) and `profile`, plus the profile's overrides and any -p NAME VALUE.
Before any notebook starts, each one's parameters are checked: its parameters cell, the injected
values and its cell tagged `parameter-checks` (checks only: no work, no files) run in a namespace of
their own, so a bad value for notebook 06 stops the batch at once, not after 03-05 have run.
It stops at the first failing notebook (or at Ctrl-C), stopping any other still running with every
process under it (kernel, result-row workers), with a non-zero exit naming it; it checks that every
declared output exists and was written by this run, and prints a per-notebook time summary; a whole
full run ends with how its tables compare with those committed at git HEAD (`qfm compare`;
information only).

Executed copies land in build/<profile>/executed/, each also as a standalone HTML page (NN_*.html,
figures embedded) to read the study without running anything. A status line shows each running
notebook (i/N), its cells done, the elapsed time and, from the previous run's times
(build/<profile>/times.json), the time left.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import os
import pickle
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .paths import BUILD_DIR, FIGURES_DIR, PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PROFILES = ("full", "smoke")
INJECTED = ("out_dir", "profile")  # parameters the batch sets itself, never an override
CHECK_TAG = "parameter-checks"
# Environment of the notebook kernels (a value already set in the environment wins): progress
# bars inside notebooks refresh at most every 10 s, so executed copies stay small.
KERNEL_ENV = {"TQDM_MININTERVAL": "10"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Folders named in the environment: kernels run in another working directory (their notebook's), so
# a relative path given to the batch is made absolute from the batch's own working directory.
PATH_VARIABLES = ("QFM_DATA_ROOT", "QFM_CACHE_DIR")


def kernel_env(jobs: int) -> dict[str, str]:
    """KERNEL_ENV plus, with several notebooks at once, each kernel's share of the cores for its own
    BLAS and torch threads (cores // jobs): two kernels of two threads each on two cores spend their
    time waiting for one another (measured: some cells 3-5 times slower). Result rows are unaffected:
    their workers run one thread each."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {**KERNEL_ENV, **({name: threads for name in THREAD_VARIABLES} if jobs > 1 else {})}


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment of a notebook's worker: `env` under this process's environment (a variable
    already set wins), with PATH_VARIABLES made absolute."""
    merged = {**env, **os.environ}
    for name in PATH_VARIABLES:
        if merged.get(name):
            merged[name] = str(Path(merged[name]).expanduser().absolute())
    return merged


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


def build_dir_for(profile: str, build_dir: str | Path | None = None) -> Path:
    """Where a run of `profile` keeps what git ignores: build_dir if given, else build/<profile>."""
    return Path(build_dir) if build_dir else BUILD_DIR / profile


def out_dir_for(profile: str, build_dir: Path | None = None) -> Path:
    return FIGURES_DIR if profile == "full" else build_dir_for(profile, build_dir) / "figures"


def parameters_for(path: Path, profile: str, out_dir: Path, overrides: dict, build_dir: Path | None = None) -> dict:
    """Parameters to inject: profile overrides from the notebook metadata, then the user's. A notebook
    of a full run whose parameters the user overrides (e.g. a subset) saves its model in build_dir
    (default build/full)/models, so that models/ keeps the full run's model, which `qfm predict` uses
    and git cannot restore."""
    declared = papermill_parameters(path)
    params = dict(zip(INJECTED, (str(out_dir), profile)))
    params.update(notebook_meta(path).get("profiles", {}).get(profile, {}))
    if profile == "full" and "model_dir" in declared and set(overrides) & set(declared):
        params["model_dir"] = str(build_dir_for(profile, build_dir) / "models")
    params.update({k: v for k, v in overrides.items() if k in declared})
    unknown = [k for k in params if k not in declared]
    if unknown:
        raise BatchError(f"{path.name}: unknown parameter(s) {unknown}; its parameters cell "
                         f"declares {sorted(declared)}")
    return params


def check_parameters(path: Path, params: dict) -> str | None:
    """Run the notebook's parameters cell, then `params` as papermill injects them (its own source
    text), then its cells tagged CHECK_TAG, in a namespace of their own; returns what they raised,
    naming the notebook, or None."""
    from papermill.translators import PythonTranslator

    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    tagged = lambda tag: ["".join(c["source"]) for c in cells if tag in c["metadata"].get("tags", [])]
    namespace: dict = {}
    try:
        with contextlib.chdir(path.parent):  # where the notebook runs: its relative paths start there
            for source in [*tagged("parameters"), PythonTranslator.codify(params)]:
                exec(compile(source, f"{path.name}, parameters cell", "exec"), namespace)
            for source in tagged(CHECK_TAG):
                exec(compile(source, f"{path.name}, {CHECK_TAG} cell", "exec"), namespace)
    except Exception as err:  # whatever the checks raise would fail the notebook's first cells
        return f"{path.name}: {type(err).__name__}: {err}"
    return None


def duration(sec: float) -> str:
    """42s, 1m32s, 1h05m."""
    sec = int(round(sec))
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m{sec % 60:02d}s"
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m"


class Progress:
    """The running notebooks' status: `[batch] 3/8 03_gated_training 12/25 cells, 1m32s (last run
    4m10s, ~2m38s left) | 5/8 05_local...`. On a terminal one line is rewritten every second;
    otherwise a plain line is printed after a cell at most every `every` s."""

    def __init__(self, stream=None, every: float = 30.0):
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self.printed = 0.0
        self.running: dict[str, dict] = {}  # label -> start, expected, done, cells
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self, label: str, expected: float | None) -> None:
        with self._lock:
            self.running[label] = {"start": time.time(), "expected": expected, "done": 0, "cells": 0}
        if self.tty and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def line(self) -> str:
        parts = []
        for label, s in self.running.items():
            elapsed = time.time() - s["start"]
            text = f"{label} {s['done']}/{s['cells'] or '?'} cells, {duration(elapsed)}"
            if s["expected"]:
                left = s["expected"] - elapsed
                text += f" (last run {duration(s['expected'])}" + (f", ~{duration(left)} left)" if left >= 1 else ")")
            parts.append(text)
        return "[batch] " + " | ".join(parts)

    def cell_done(self, label: str, done: int, cells: int) -> None:
        with self._lock:
            self.running[label].update(done=done, cells=cells)
            if self.tty:
                self._redraw()
            elif time.time() - self.printed >= self.every:
                self._write(self.line() + "\n")
                self.printed = time.time()

    def finish(self, label: str) -> None:
        with self._lock:
            self.running.pop(label, None)

    def print(self, text: str) -> None:
        """A line of its own above the status line."""
        with self._lock:
            self._write(("\r\x1b[K" if self.tty else "") + text + "\n")
            if self.tty and self.running:
                self._redraw()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with self._lock:
                self._write("\r\x1b[K")

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self.running:
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


def _kernel_manager_class():
    """nbclient's kernel manager, without the interrupt (SIGINT) that jupyter_client sends just before a
    shutdown request: a kernel still finishing its last reply (likelier with two notebooks sharing the
    CPU) would log a spurious "ERROR | KeyboardInterrupt caught in kernel"."""
    from jupyter_client.manager import AsyncKernelManager

    class NoInterruptAtShutdown(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return NoInterruptAtShutdown


def kernel_config():
    """Kernel manager settings: CurveZMQ-encrypted kernel sockets where pyzmq and the kernel support
    them (ipykernel otherwise warns that the kernel runs over TCP without encryption)."""
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    if zmq.has("curve") and KernelManager.class_traits().get("transport_encryption") is not None:
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    return Config()


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


def notebook_needs(todo: list[Path]) -> dict[str, set[str]]:
    """For each notebook to run, the notebooks among `todo` it must wait for: metadata "needs", a list
    of name prefixes of earlier notebooks (those whose cached results it reuses; run it alone and it
    computes them itself)."""
    names = [p.name for p in todo]
    folder_names = [p.name for p in notebooks(todo[0].parent)] if todo else []
    needs = {}
    for path in todo:
        wanted = set()
        for prefix in notebook_meta(path).get("needs", []):
            found = [n for n in folder_names if n.startswith(str(prefix))]
            if len(found) != 1 or found[0] >= path.name:
                raise BatchError(f"{path.name}: metadata qfm.needs names {prefix!r}, which matches "
                                 f"{found or 'no notebook'}; it must name one earlier notebook")
            wanted.update(n for n in found if n in names)
        needs[path.name] = wanted
    return needs


def critical_paths(needs: dict[str, set[str]], seconds: dict[str, float], default: float = 60.0) -> dict[str, float]:
    """Each notebook's longest chain of seconds to the end of the batch through the notebooks that wait
    for it (its own time included; last run's times, `default` where unknown): run the longest first."""
    after = {n: [m for m, need in needs.items() if n in need] for n in needs}
    length: dict[str, float] = {}

    def chain(name: str) -> float:
        if name not in length:
            length[name] = seconds.get(name, default) + max((chain(m) for m in after[name]), default=0.0)
        return length[name]

    return {n: chain(n) for n in needs}


def default_jobs() -> int:
    """Notebooks run at once: 2 (1 on a one-core machine). Each notebook's result rows already use
    every core (protocol.default_jobs); a second notebook fills the cores while the first runs
    single-threaded code (imports, plots, statistics)."""
    return min(2, os.cpu_count() or 1)


def _execute(path: str, executed: str, params: dict, cwd: str, report) -> None:
    """Run one notebook with papermill in a fresh kernel and write its HTML page; report("cell", done,
    n_cells) after each cell, then report("done") or report("failed", message)."""
    import papermill
    from papermill.engines import papermill_engines

    papermill_engines.register("qfm-progress", _progress_engine())
    exporter = html_exporter()
    try:
        papermill.execute_notebook(path, executed, parameters=params, engine_name="qfm-progress",
                                   on_cell=lambda done, cells: report("cell", done, cells),
                                   kernel_name="python3", cwd=cwd, progress_bar=False, log_output=False,
                                   request_save_on_cell_execute=False, config=kernel_config(),
                                   kernel_manager_class=_kernel_manager_class())
    except Exception as err:
        pages = [executed]
        try:
            pages.append(str(write_html(Path(executed), exporter)))
        except Exception:  # the notebook's failure is the error to report
            pass
        report("failed", f"notebook {Path(path).name} failed ({type(err).__name__}); executed copy with the "
                         f"traceback: {' and '.join(pages)}\n{err}")
        return
    try:
        write_html(Path(executed), exporter)
    except Exception as err:  # the notebook ran and wrote its outputs: its HTML page is a convenience
        print(f"[batch] {Path(path).name}: no HTML page ({type(err).__name__}: {err})", file=sys.stderr)
    report("done")


def _worker() -> None:
    """A worker process (started by run_batch): runs the notebook of its argument (a pickled, hex-coded
    (path, executed, params, cwd)) and reports on stdout, one JSON list per line; its kernel's own
    output goes to stderr."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for run_batch, which stops its workers
    path, executed, params, cwd = pickle.loads(bytes.fromhex(sys.argv[1]))
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    _execute(path, executed, params, cwd, lambda *event: events.write(json.dumps(event) + "\n"))


def _start_worker(name: str, args: tuple, env: dict[str, str], events: queue.Queue) -> subprocess.Popen:
    """A worker process for one notebook; a thread forwards its reports to `events` as (name, kind,
    ...), ending with (name, "exit", exit code)."""
    process = subprocess.Popen([sys.executable, "-c", "from qfm_lib.batch import _worker; _worker()",
                                pickle.dumps(args).hex()], stdout=subprocess.PIPE, text=True,
                               env=worker_environment(env))

    def forward():
        for line in process.stdout:
            events.put((name, *json.loads(line)))
        events.put((name, "exit", process.wait()))

    threading.Thread(target=forward, daemon=True).start()
    return process


def _stop(process: subprocess.Popen) -> None:
    """Stop a worker and every process under it: its kernel and the kernel's own worker processes
    (result rows), which would otherwise run on, orphaned, to the end of their current row."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    for member in psutil.wait_procs(family, timeout=10)[1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()


def _next_event(events: queue.Queue) -> tuple:
    """The next report of a worker. Waits in short steps: a Ctrl-C delivered to another thread then
    still interrupts the main thread within half a second."""
    while True:
        try:
            return events.get(timeout=0.5)
        except queue.Empty:
            pass


def _stale_outputs(path: Path, out_dir: Path, start: float) -> list[str]:
    """Declared outputs that are missing or older than this run of the notebook."""
    targets = [out_dir / rel for rel in notebook_meta(path).get("outputs", [])]
    return [str(t) for t in targets if not t.is_file() or t.stat().st_mtime < start - 1]


def run_batch(profile: str = "full", only: list[str] | None = None, overrides: dict | None = None,
              folder: Path = NOTEBOOK_DIR, build_dir: Path | None = None,
              jobs: int | None = None) -> list[tuple[str, float]]:
    """Run the notebooks, up to `jobs` at once (default_jobs()), each in its own worker process and
    fresh kernel, a notebook only after those its metadata "needs"; returns [(notebook name, seconds)]
    in numeric order. The first failure stops the batch: notebooks still running are stopped and no
    other starts. build_dir (default build/<profile>) receives executed/ (copies and HTML pages),
    times.json and, for non-full profiles, figures/."""
    if profile not in PROFILES:
        raise BatchError(f"unknown profile {profile!r}; profiles: {PROFILES}")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise BatchError(f"jobs must be at least 1, got {jobs}")
    build_dir = build_dir_for(profile, build_dir)
    out_dir = out_dir_for(profile, build_dir)
    executed_dir = build_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in notebooks(folder) if not only or any(p.name.startswith(o) for o in only)]
    if not todo:
        raise BatchError(f"no notebooks to run in {folder} (only={only})")
    reserved = sorted(set(overrides or {}) & set(INJECTED))
    if reserved:
        raise BatchError(f"parameter(s) {reserved} are set by the batch, not by overrides: choose the profile "
                         f"with --profile (profile {profile!r} writes its figures to {out_dir})")
    declared = {k for p in todo for k in papermill_parameters(p)}
    unknown = sorted(set(overrides or {}) - declared)
    if unknown:
        raise BatchError(f"unknown parameter(s) {unknown}: no notebook declares them "
                         f"(declared: {sorted(declared)})")
    params = {p.name: parameters_for(p, profile, out_dir, overrides or {}, build_dir) for p in todo}
    problems = [problem for p in todo if (problem := check_parameters(p, params[p.name]))]
    if problems:
        raise BatchError("bad parameters; no notebook was started:\n" + "\n".join(problems))
    needs = notebook_needs(todo)
    times_file = build_dir / "times.json"
    previous = load_times(times_file)
    known = [previous[p.name] for p in todo if p.name in previous]
    estimate = f"; last run {duration(sum(known))} of notebook time" if len(known) == len(todo) else ""
    print(f"[batch] {len(todo)} notebook(s), profile {profile}, up to {jobs} at once{estimate}", flush=True)
    priority = critical_paths(needs, previous)
    labels = {p.name: f"{i}/{len(todo)} {p.stem}" for i, p in enumerate(todo, 1)}
    by_name = {p.name: p for p in todo}
    pending = sorted(by_name, key=lambda n: (0 if jobs == 1 else -priority[n], n))
    events: queue.Queue = queue.Queue()
    running: dict[str, tuple] = {}  # name -> (process, start time)
    times: dict[str, float] = {}
    progress = Progress()
    batch_start = time.time()
    try:
        while pending or running:
            for name in [n for n in pending if needs[n] <= times.keys()][:jobs - len(running)]:
                pending.remove(name)
                progress.print(f"[batch] {labels[name]} ({profile}) ...")
                args = (str(by_name[name]), str(executed_dir / name), params[name], str(folder))
                running[name] = (_start_worker(name, args, kernel_env(jobs), events), time.time())
                progress.start(labels[name], previous.get(name))
            name, kind, *rest = _next_event(events)
            if name not in running:  # the exit of a worker that has reported its end
                continue
            if kind == "cell":
                progress.cell_done(labels[name], *rest)
                continue
            if kind == "exit":
                raise BatchError(f"notebook {name}: its worker process died (exit code {rest[0]}) "
                                 f"without reporting an end")
            _, start = running.pop(name)
            progress.finish(labels[name])
            if kind == "failed":
                raise BatchError(rest[0])
            stale = _stale_outputs(by_name[name], out_dir, start)
            if stale:
                raise BatchError(f"notebook {name} did not write its declared outputs: {stale}")
            times[name] = previous[name] = time.time() - start
            times_file.write_text(json.dumps(previous, indent=1, sort_keys=True) + "\n")
            progress.print(f"[batch] {labels[name]} done in {duration(times[name])}")
    finally:
        progress.close()
        for process, _ in running.values():  # only after a failure or an interrupt
            _stop(process)
    ordered = [(p.name, times[p.name]) for p in todo]
    width = max(len(n) for n, _ in ordered)
    print(f"\n[batch] time per notebook (executed copies and HTML pages in {executed_dir})")
    for name, sec in ordered:
        print(f"  {name:<{width}}  {sec:7.1f} s")
    print(f"  {'sum':<{width}}  {sum(s for _, s in ordered):7.1f} s")
    print(f"  {'wall':<{width}}  {time.time() - batch_start:7.1f} s ({jobs} at once)")
    return ordered


def _literal(value: str):
    """A -p value: a Python literal if it is one (tuples become lists: papermill injects a tuple as its
    text), else the text itself."""
    try:
        return _lists(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        return value


def _lists(value):
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return {k: _lists(v) for k, v in value.items()} if isinstance(value, dict) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=PROFILES)
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks run at once (default 2; 1: one after another in numeric order)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter in every notebook that declares it")
    args = parser.parse_args(argv)
    try:
        run_batch(args.profile, args.only, {k: _literal(v) for k, v in args.p}, jobs=args.jobs)
    except BatchError as err:
        print(f"[batch] FAILED: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[batch] interrupted; the notebooks still running were stopped", file=sys.stderr)
        return 130
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
