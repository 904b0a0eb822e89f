"""study.cached: a notebook's slow step computed once per key, kept on disk; study.single_thread."""
import functools
import os
import subprocess
import sys

import numpy as np
import pytest

from qfm_lib.study import cached


def test_cached_computes_once_per_key_and_content(tmp_path, monkeypatch):
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path))
    calls = []

    def embed():
        calls.append(1)
        return {"emb": np.arange(6.0).reshape(3, 2)}

    x = np.ones((4, 3))
    first = cached("demo", {"seed": 0}, embed, extra=x.tobytes())
    again = cached("demo", {"seed": 0}, embed, extra=x.copy().tobytes())  # equal content: read from disk
    assert len(calls) == 1 and np.array_equal(first["emb"], again["emb"])
    cached("demo", {"seed": 0}, embed, extra=(x + 1).tobytes())  # other content
    cached("demo", {"seed": 1}, embed, extra=x.tobytes())  # other setting
    cached("demo", {"seed": 0}, lambda: embed(), extra=x.tobytes())  # other source
    assert len(calls) == 4
    assert len(list((tmp_path / "demo").glob("*.pkl"))) == 4
    assert not list((tmp_path / "demo").glob(".*.tmp"))  # written atomically, no temp file left


def test_functions_without_source_are_keyed_by_their_code(tmp_path, monkeypatch):
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path))
    tenth, fifth = (eval(f"lambda: {v}") for v in ("0.1", "0.2"))  # no source file to read
    assert cached("demo", {}, tenth) == 0.1 and cached("demo", {}, fifth) == 0.2
    with pytest.raises(TypeError, match="compute must be a function, got partial"):
        cached("demo", {}, functools.partial(float, "1"))


def test_single_thread_limits_blas_and_torch():
    code = ("import torch; from threadpoolctl import threadpool_info; from qfm_lib.study import single_thread; "
            "single_thread(); print(torch.get_num_threads(), sorted({p['num_threads'] for p in threadpool_info()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}).stdout
    assert out.split() == ["1", "[1]"]
