"""The code and library parts of the cache keys (qfm_lib.cache)."""
import shutil
import sys
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
    path.write_text(path.read_text() + text)


def test_an_edited_module_moves_the_digest_without_a_restart(package_copy):
    # a module this process has not imported from these files: the digest follows the disk, a comment
    # changes nothing
    before = code_digest("saliency")
    _append(package_copy / "images.py", "\n# a comment\n")
    assert code_digest("saliency") == before
    _append(package_copy / "images.py", "EXTRA = 1\n")
    assert code_digest("saliency") != before


def test_a_module_edited_but_not_reloaded_is_an_error(package_copy, monkeypatch):
    # imported from images.py, then the file edited: the running code is not the code the key would name
    images = SimpleNamespace(__file__=str(package_copy / "images.py"), __spec__=object())
    monkeypatch.setitem(sys.modules, "qfm_lib.images", images)
    before = code_digest("saliency")
    _append(package_copy / "images.py", "\n# a comment\n")  # no code changed: nothing to reload
    assert code_digest("saliency") == before
    _append(package_copy / "images.py", "EXTRA = 1\n")
    with pytest.raises(RuntimeError, match="images.py changed after this process imported it"):
        code_digest("saliency")
    images.__spec__ = object()  # importlib.reload (%autoreload) gives the module a new spec
    assert code_digest("saliency") != before


def test_type_checking_imports_are_not_followed(package_copy):
    (package_copy / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import __version__\nfrom .paths import cache_dir\n"
        "if TYPE_CHECKING:\n    from .decoder import TrainedDecoder\nelse:\n    from .images import load_rgb\n"
        "def f():\n    from .metrics import iqa_metrics\n")
    assert code_files("probe") == ["__init__.py", "images.py", "metrics.py", "paths.py", "probe.py"]


def test_the_tail_input_key_holds_only_the_code_that_writes_it():
    # tail.py reads TokenSet's layout from tokens.py, not from decoder.py: editing the decoder or its
    # training keeps the 1.2 GB tail input
    assert code_files("tail") == [f"{m}.py" for m in ("backbones", "cache", "features", "images", "paths", "tail", "tokens")]


def test_a_library_upgrade_moves_the_feature_key(monkeypatch):
    import PIL

    backbone = SimpleNamespace(name="b", weights_sha256="0", mean=(0.5,), std=(0.5,))
    before = F.cache_key(["a"], ["h"], backbone, F.FeatureSpec(), False)
    assert library_versions("PIL")["PIL"] == PIL.__version__
    monkeypatch.setattr(PIL, "__version__", "0.0.1")  # e.g. a new JPEG decoder
    assert F.cache_key(["a"], ["h"], backbone, F.FeatureSpec(), False) != before
