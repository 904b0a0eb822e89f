"""The notebook batch, end to end on the smoke profile (real LIVEC images, a few dozen)."""
import io
import json
import re
import time

import nbformat
import psutil
import pytest

from qfm_lib import batch
from qfm_lib.paths import FIGURES_DIR


def _snapshot(folder):
    return {p: p.stat().st_mtime for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


@pytest.mark.slow
def test_smoke_batch_runs_every_notebook(data_root, monkeypatch, capsys):
    monkeypatch.setenv("QFM_DATA_ROOT", str(data_root))
    committed = _snapshot(FIGURES_DIR)
    times = batch.run_batch("smoke")
    assert [name for name, _ in times] == [p.name for p in batch.notebooks()]
    out = batch.out_dir_for("smoke")
    for nb in batch.notebooks():
        for rel in batch.notebook_meta(nb)["outputs"]:
            assert (out / rel).is_file(), rel
    assert _snapshot(FIGURES_DIR) == committed, "the smoke run touched the committed figures"
    assert "time per notebook" in capsys.readouterr().out


def _tiny_notebook(folder, name, code, outputs=(), needs=()):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("out_dir = '.'\nprofile = 'full'\nvalue = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["qfm"] = {"outputs": list(outputs), "needs": list(needs)}
    nbformat.write(nb, folder / name)


def test_batch_stops_at_first_failure_and_names_it(tmp_path):
    _tiny_notebook(tmp_path, "01_ok.ipynb", "print(value)")
    _tiny_notebook(tmp_path, "02_broken.ipynb", "raise RuntimeError('boom in 02')")
    _tiny_notebook(tmp_path, "03_never.ipynb", "open('ran', 'w')")
    build = tmp_path / "build"
    with pytest.raises(batch.BatchError, match="(?s)02_broken.ipynb failed.*02_broken.html.*boom in 02"):
        batch.run_batch("smoke", folder=tmp_path, build_dir=build, jobs=1)
    assert not (tmp_path / "ran").exists()
    assert "boom in 02" in (build / "executed" / "02_broken.html").read_text()
    assert list(json.loads((build / "times.json").read_text())) == ["01_ok.ipynb"]


def test_missing_declared_output_fails(tmp_path):
    _tiny_notebook(tmp_path, "01_lazy.ipynb", "x = 1", outputs=["never_written.png"])
    with pytest.raises(batch.BatchError, match="did not write its declared outputs.*never_written.png"):
        batch.run_batch("smoke", folder=tmp_path, build_dir=tmp_path / "build")


FIGURES = """
import matplotlib.pyplot as plt
from qfm_lib import plots

fig, ax = plt.subplots()
ax.plot([1, 2, 3])
plots.save_figure(fig, out_dir, 'inline.png')  # the kernel's default (inline) backend
import matplotlib
matplotlib.use('Agg')
fig, ax = plt.subplots()
ax.plot([3, 2, 1])
plots.save_figure(fig, out_dir, 'agg.png')
"""


def test_executed_notebook_shows_figures_once_and_has_an_html_page(tmp_path, capfd):
    _tiny_notebook(tmp_path, "01_fig.ipynb", FIGURES, outputs=["inline.png", "agg.png"])
    build = tmp_path / "build"
    build.mkdir()
    (build / "times.json").write_text(json.dumps({"01_fig.ipynb": 75.0}))
    times = batch.run_batch("smoke", folder=tmp_path, build_dir=build)
    assert (build / "figures" / "agg.png").is_file()
    executed = nbformat.read(build / "executed" / "01_fig.ipynb", as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # each figure once: shown by save_figure, not again by the inline backend
    html = (build / "executed" / "01_fig.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64', html)) == 2
    assert json.loads((build / "times.json").read_text()) == {"01_fig.ipynb": pytest.approx(times[0][1])}
    out, err = capfd.readouterr()
    assert f"1 notebook(s), profile smoke, up to {batch.default_jobs()} at once; last run 1m15s of notebook time" in out
    assert "1/1 01_fig done in" in out
    assert "without encryption" not in err


def test_a_notebook_that_ran_is_done_even_without_its_html_page(tmp_path, monkeypatch, capsys):
    _tiny_notebook(tmp_path, "01_ok.ipynb", "print(value)")

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(batch, "write_html", broken)
    events = []
    batch._execute(str(tmp_path / "01_ok.ipynb"), str(tmp_path / "01_ok.out.ipynb"), {}, str(tmp_path),
                   lambda *event: events.append(event))
    assert events[-1] == ("done",)
    assert "01_ok.ipynb: no HTML page (OSError: disk full)" in capsys.readouterr().err


def test_parallel_batch_waits_for_needs_and_stops_the_others_at_a_failure(tmp_path):
    _tiny_notebook(tmp_path, "01_first.ipynb", "import time; time.sleep(3); open('first_done', 'w')")
    _tiny_notebook(tmp_path, "02_after.ipynb", "import os; assert os.path.exists('first_done')", needs=["01"])
    _tiny_notebook(tmp_path, "03_alone.ipynb", "open('alone_done', 'w')")
    build = tmp_path / "build"
    times = batch.run_batch("smoke", folder=tmp_path, build_dir=build, jobs=2)
    assert [n for n, _ in times] == ["01_first.ipynb", "02_after.ipynb", "03_alone.ipynb"]
    assert (tmp_path / "alone_done").exists()

    (tmp_path / "first_done").unlink()
    _tiny_notebook(tmp_path, "01_first.ipynb", "import time; time.sleep(60); open('first_done', 'w')")
    _tiny_notebook(tmp_path, "03_alone.ipynb", "raise RuntimeError('boom in 03')")
    start = time.time()
    with pytest.raises(batch.BatchError, match="(?s)03_alone.ipynb failed.*boom in 03"):
        batch.run_batch("smoke", folder=tmp_path, build_dir=build, jobs=2)
    assert time.time() - start < 45  # 01 was stopped, not waited for
    time.sleep(2)
    assert not (tmp_path / "first_done").exists()


def test_a_stopped_notebook_leaves_no_process_behind(tmp_path):
    # 01's kernel starts a process of its own (as protocol.evaluate starts row workers); 02 fails
    _tiny_notebook(tmp_path, "01_spawner.ipynb", "import subprocess, time; p = subprocess.Popen(['sleep', '300']); "
                                                 "open('pid', 'w').write(str(p.pid)); time.sleep(300)")
    _tiny_notebook(tmp_path, "02_failing.ipynb", "import os, time\nwhile not os.path.exists('pid'): time.sleep(0.2)\n"
                                                 "raise RuntimeError('boom')")
    with pytest.raises(batch.BatchError, match="02_failing.ipynb failed"):
        batch.run_batch("smoke", folder=tmp_path, build_dir=tmp_path / "build", jobs=2)
    pid = int((tmp_path / "pid").read_text())
    gone = psutil.wait_procs([psutil.Process(pid)], timeout=5)[0] if psutil.pid_exists(pid) else [pid]
    assert gone or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_worker_that_dies_is_named(tmp_path):
    _tiny_notebook(tmp_path, "01_killer.ipynb", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)")
    with pytest.raises(batch.BatchError, match=r"01_killer.ipynb: its worker process died \(exit code -9\)"):
        batch.run_batch("smoke", folder=tmp_path, build_dir=tmp_path / "build")


def test_needs_must_name_one_earlier_notebook(tmp_path):
    _tiny_notebook(tmp_path, "01_a.ipynb", "x = 1", needs=["02"])
    _tiny_notebook(tmp_path, "02_b.ipynb", "x = 1")
    with pytest.raises(batch.BatchError, match="01_a.ipynb: metadata qfm.needs names '02'.*earlier"):
        batch.run_batch("smoke", folder=tmp_path, build_dir=tmp_path / "build")
    needs = {"01_a": set(), "02_b": {"01_a"}, "03_c": {"01_a"}, "04_d": {"02_b", "03_c"}}
    paths = batch.critical_paths(needs, {"01_a": 1, "02_b": 10, "03_c": 2, "04_d": 5})
    assert paths == {"01_a": 16, "02_b": 15, "03_c": 7, "04_d": 5}


def test_kernels_share_the_cores_when_notebooks_run_at_once(monkeypatch):
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 8)
    assert batch.kernel_env(2)["OMP_NUM_THREADS"] == "4" and batch.kernel_env(16)["MKL_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in batch.kernel_env(1)  # one at a time: torch and BLAS defaults
    assert batch.default_jobs() == 2


def test_kernels_get_absolute_data_and_cache_folders(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QFM_DATA_ROOT", "../shared/data")
    monkeypatch.delenv("QFM_CACHE_DIR", raising=False)
    env = batch.worker_environment({"QFM_CACHE_DIR": "cache", "TQDM_MININTERVAL": "10"})
    assert env["QFM_DATA_ROOT"] == str(tmp_path / "../shared/data")
    assert env["QFM_CACHE_DIR"] == str(tmp_path / "cache")
    assert env["TQDM_MININTERVAL"] == "10"
    monkeypatch.setenv("TQDM_MININTERVAL", "1")  # a variable already set wins
    assert batch.worker_environment({"TQDM_MININTERVAL": "10"})["TQDM_MININTERVAL"] == "1"


def test_progress_lines():
    stream = io.StringIO()
    progress = batch.Progress(stream, every=0)
    progress.start("2/6 02_pairs", expected=100.0)
    progress.cell_done("2/6 02_pairs", 3, 10)
    progress.start("3/6 03_gated", expected=None)
    progress.cell_done("3/6 03_gated", 1, 4)
    progress.finish("2/6 02_pairs")
    progress.print("[batch] 2/6 02_pairs done in 5s")
    progress.close()
    assert stream.getvalue().splitlines() == [
        "[batch] 2/6 02_pairs 3/10 cells, 0s (last run 1m40s, ~1m40s left)",
        "[batch] 2/6 02_pairs 3/10 cells, 0s (last run 1m40s, ~1m40s left) | 3/6 03_gated 1/4 cells, 0s",
        "[batch] 2/6 02_pairs done in 5s"]
    assert [batch.duration(s) for s in (5, 92, 3900)] == ["5s", "1m32s", "1h05m"]


def test_numeric_order_and_unknown_parameters(tmp_path):
    for name in ["10_c.ipynb", "02_b.ipynb", "01_a.ipynb", "notes.ipynb"]:
        _tiny_notebook(tmp_path, name, "x = 1")
    assert [p.name for p in batch.notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    with pytest.raises(batch.BatchError, match="unknown parameter.*'valeu'"):
        batch.run_batch("smoke", folder=tmp_path, overrides={"valeu": 2}, build_dir=tmp_path / "build")
    with pytest.raises(batch.BatchError, match=r"\['out_dir'\] are set by the batch.*--profile"):
        batch.run_batch("smoke", folder=tmp_path, overrides={"out_dir": "elsewhere"}, build_dir=tmp_path / "build")
    with pytest.raises(batch.BatchError, match="unknown profile"):
        batch.run_batch("fast", folder=tmp_path, build_dir=tmp_path / "build")


def test_bad_parameter_value_fails_before_any_notebook_starts(tmp_path):
    _tiny_notebook(tmp_path, "01_first.ipynb", "open('ran', 'w')")
    for name in ("02_checked.ipynb", "03_checked_too.ipynb"):
        _tiny_notebook(tmp_path, name, "if value > 3:\n    raise ValueError(f'value must be at most 3, got {value}')")
        nb = nbformat.read(tmp_path / name, as_version=4)
        nb.cells[1].metadata["tags"] = [batch.CHECK_TAG]
        nbformat.write(nb, tmp_path / name)
    build = tmp_path / "build"
    with pytest.raises(batch.BatchError, match="(?s)no notebook was started.*02_checked.ipynb: ValueError: "
                                               "value must be at most 3, got 5.*03_checked_too.ipynb"):
        batch.run_batch("smoke", folder=tmp_path, overrides={"value": 5}, build_dir=build, jobs=1)
    assert not (tmp_path / "ran").exists() and not list((build / "executed").iterdir())
    assert batch.check_parameters(tmp_path / "02_checked.ipynb", {"value": 3}) is None


def test_committed_notebooks_check_their_parameters_up_front():
    nb02 = batch.NOTEBOOK_DIR / "02_pair_mining.ipynb"
    params = batch.parameters_for(nb02, "smoke", batch.out_dir_for("smoke"), {"dist_low": 1.5})
    assert "dist_low must be a number in 0..1, got 1.5" in batch.check_parameters(nb02, params)
    for path in batch.notebooks():
        params = batch.parameters_for(path, "smoke", batch.out_dir_for("smoke"), {})
        assert batch.check_parameters(path, params) is None, path.name
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert batch.CHECK_TAG in code[1]["metadata"].get("tags", []), path.name  # right after parameters
    nb07 = batch.NOTEBOOK_DIR / "07_distortion_lab.ipynb"  # papermill injects a tuple as its text
    params = batch.parameters_for(nb07, "smoke", batch.out_dir_for("smoke"), {"levels": (1, 3)})
    assert "levels must be a non-empty list, got '(1, 3)'" in batch.check_parameters(nb07, params)
    assert batch._literal("1,3") == [1, 3] and batch._literal("{'dim': (64, 128)}") == {"dim": [64, 128]}
    assert batch._literal("head") == "head"
    params = batch.parameters_for(nb07, "smoke", batch.out_dir_for("smoke"), {"levels": batch._literal("1,3")})
    assert batch.check_parameters(nb07, params) is None
    nb06 = batch.NOTEBOOK_DIR / "06_results_tables.ipynb"
    params = batch.parameters_for(nb06, "full", batch.out_dir_for("full"), {"baseline": "decoder", "variants": ["ridge"]})
    assert "baseline 'decoder' must be one of the variants run" in batch.check_parameters(nb06, params)
    assert params["model_dir"] == str(batch.BUILD_DIR / "full" / "models")  # models/ keeps the full run's model
    assert "model_dir" not in batch.parameters_for(nb06, "full", batch.out_dir_for("full"), {})
    assert "model_dir" not in batch.parameters_for(nb06, "full", batch.out_dir_for("full"), {"levels": (1, 3)})  # 07's
    params = batch.parameters_for(nb06, "full", batch.out_dir_for("full"), {"model_dir": "../README.md"})
    assert "model_dir '../README.md' is a file" in batch.check_parameters(nb06, params)  # from notebooks/
    for over, problem in [({"scorers": ["nope"]}, "scorers[0] = 'nope' is not one of"),
                          ({"n_splits": 11}, "n_splits 11 exceeds the 10 splits"), ({"dataset": "foo"}, "known dataset")]:
        path = nb07 if "scorers" in over else nb06
        assert problem in batch.check_parameters(path, batch.parameters_for(path, "smoke", batch.out_dir_for("smoke"), over))


def test_committed_notebooks_have_no_outputs_and_declare_outputs():
    needs = batch.notebook_needs(batch.notebooks())  # each names earlier notebooks
    assert needs["06_results_tables.ipynb"] == {"03_gated_training.ipynb", "04_distillation.ipynb",
                                                "05_local_manifold_contrastive.ipynb"}
    for path in batch.notebooks():
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), path.name
        assert "parameters" in code[0]["metadata"].get("tags", []), path.name
        assert nb["metadata"]["qfm"]["outputs"], path.name
        ids = [c.get("id") for c in nb["cells"]]  # nbformat 4.5: every cell has a unique id
        assert all(ids) and len(set(ids)) == len(ids), path.name
