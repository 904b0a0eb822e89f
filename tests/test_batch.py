"""The notebook batch, end to end on the smoke profile (real LIVEC images, a few dozen)."""
import json
import shutil

import nbformat
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


def _tiny_notebook(folder, name, code, outputs=()):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("out_dir = '.'\nprofile = 'full'\nvalue = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["qfm"] = {"outputs": list(outputs)}
    nbformat.write(nb, folder / name)


def test_batch_stops_at_first_failure_and_names_it(tmp_path):
    _tiny_notebook(tmp_path, "01_ok.ipynb", "print(value)")
    _tiny_notebook(tmp_path, "02_broken.ipynb", "raise RuntimeError('boom in 02')")
    _tiny_notebook(tmp_path, "03_never.ipynb", "open('ran', 'w')")
    with pytest.raises(batch.BatchError, match="(?s)02_broken.ipynb failed.*boom in 02"):
        batch.run_batch("smoke", folder=tmp_path)
    assert not (tmp_path / "ran").exists()


def test_missing_declared_output_fails(tmp_path):
    _tiny_notebook(tmp_path, "01_lazy.ipynb", "x = 1", outputs=["never_written.png"])
    with pytest.raises(batch.BatchError, match="did not write its declared outputs.*never_written.png"):
        batch.run_batch("smoke", folder=tmp_path)


def test_numeric_order_and_unknown_parameters(tmp_path):
    for name in ["10_c.ipynb", "02_b.ipynb", "01_a.ipynb", "notes.ipynb"]:
        _tiny_notebook(tmp_path, name, "x = 1")
    assert [p.name for p in batch.notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    with pytest.raises(batch.BatchError, match="unknown parameter.*'valeu'"):
        batch.run_batch("smoke", folder=tmp_path, overrides={"valeu": 2})
    with pytest.raises(batch.BatchError, match="unknown profile"):
        batch.run_batch("fast", folder=tmp_path)


def test_bad_parameter_value_fails_first_cell(data_root, monkeypatch):
    monkeypatch.setenv("QFM_DATA_ROOT", str(data_root))
    with pytest.raises(batch.BatchError, match="(?s)02_pair_mining.*dist_low must be a number in 0..1, got 1.5"):
        batch.run_batch("smoke", only=["02"], overrides={"dist_low": 1.5})


def test_committed_notebooks_have_no_outputs_and_declare_outputs():
    for path in batch.notebooks():
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), path.name
        assert "parameters" in code[0]["metadata"].get("tags", []), path.name
        assert nb["metadata"]["qfm"]["outputs"], path.name
