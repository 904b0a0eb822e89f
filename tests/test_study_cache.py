"""study.cached: a notebook's slow step computed once per key, kept on disk."""
import numpy as np

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
