"""The code and library parts of the cache keys (qfm_lib.cache)."""
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import qfm_lib
from qfm_lib import cache
from qfm_lib import features as F
from qfm_lib.cache import code_digest, code_files, library_versions


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of qfm_lib's sources that code_files and code_digest read instead of the real ones."""
    copy = tmp_path / "qfm_lib"
    shutil.copytree(Path(qfm_lib.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "_HERE", copy)
    code_digest.cache_clear()
    yield copy
    code_digest.cache_clear()


def _append(path: Path, text: str) -> None:
    stat = path.stat()
    path.write_text(path.read_text() + text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a later mtime even on a coarse clock


def test_an_edited_module_moves_the_digest_without_a_restart(package_copy):
    # %autoreload: the same process sees the edit (no cache_clear), a comment still changes nothing
    before = code_digest("saliency")
    _append(package_copy / "images.py", "\n# a comment\n")
    assert code_digest("saliency") == before
    _append(package_copy / "images.py", "EXTRA = 1\n")
    assert code_digest("saliency") != before


def test_type_checking_imports_and_ignored_modules_are_not_followed(package_copy):
    (package_copy / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import __version__\nfrom .paths import cache_dir\n"
        "if TYPE_CHECKING:\n    from .decoder import TokenSet\nelse:\n    from .images import load_rgb\n"
        "def f():\n    from .metrics import iqa_metrics\n")
    assert code_files("probe") == ["__init__.py", "images.py", "metrics.py", "paths.py", "probe.py"]
    assert code_files("probe", ignore=("metrics",)) == ["__init__.py", "images.py", "paths.py", "probe.py"]
    before = code_digest("probe", ignore=("metrics",))
    _append(package_copy / "metrics.py", "EXTRA = 1\n")
    assert code_digest("probe", ignore=("metrics",)) == before != code_digest("probe")


def test_cache_keys_leave_out_what_the_cached_bytes_do_not_depend_on():
    # the tail's input is only wrapped in decoder.TokenSet; BRISQUE's features do not use metrics.py
    assert "decoder.py" not in code_files("tail", ignore=("decoder",))
    assert "metrics.py" not in code_files("baselines", ignore=("metrics",))
    assert code_files("predict")[0] == "__init__.py"  # `from . import __version__`


def test_a_library_upgrade_moves_the_feature_key(monkeypatch):
    import PIL

    backbone = SimpleNamespace(name="b", weights_sha256="0", mean=(0.5,), std=(0.5,))
    before = F.cache_key(["a"], ["h"], backbone, F.FeatureSpec(), False)
    assert library_versions("PIL")["PIL"] == PIL.__version__
    monkeypatch.setattr(PIL, "__version__", "0.0.1")  # e.g. a new JPEG decoder
    assert F.cache_key(["a"], ["h"], backbone, F.FeatureSpec(), False) != before
