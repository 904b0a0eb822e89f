"""study.cached: a notebook's slow step computed once per key, kept on disk."""
import numpy as np

from qfm_lib.study import cached


def test_cached_computes_once_per_key_and_hashes_arrays_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path))
    calls = []

    def embed():
        calls.append(1)
        return {"emb": np.arange(6.0).reshape(3, 2)}

    x = np.ones((4, 3))
    first = cached("demo", {"x": x, "seed": 0}, embed)
    again = cached("demo", {"x": x.copy(), "seed": 0}, embed)  # equal content: read from disk
    assert len(calls) == 1 and np.array_equal(first["emb"], again["emb"])
    cached("demo", {"x": x + 1, "seed": 0}, embed)  # other content
    cached("demo", {"x": x, "seed": 1}, embed)  # other setting
    cached("demo", {"x": x, "seed": 0}, lambda: embed())  # other source
    assert len(calls) == 4
    assert len(list((tmp_path / "demo").glob("*.pkl"))) == 4
    assert not list((tmp_path / "demo").glob(".*.tmp"))  # written atomically, no temp file left
