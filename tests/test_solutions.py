"""Every exercise solution runs (on smoke-size data), so none rots."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SOLUTIONS = sorted((Path(__file__).resolve().parent.parent / "solutions").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("solutions_cache")


def test_every_notebook_has_solutions():
    from qfm_lib.batch import notebooks

    have = {p.stem.split("_")[0] for p in SOLUTIONS}
    assert {p.name[:2] for p in notebooks()} <= have


@pytest.mark.slow
@pytest.mark.parametrize("script", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_script_runs(script, data_root, shared_cache):
    env = {**os.environ, "QFM_DATA_ROOT": str(data_root), "QFM_CACHE_DIR": str(shared_cache)}
    done = subprocess.run([sys.executable, str(script)], cwd=script.parent.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "solution_1" in done.stdout
