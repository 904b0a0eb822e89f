"""The code and library parts of the cache keys (qfm_lib.cache)."""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from qfm_lib import features as F
from qfm_lib.cache import code_digest, code_files, library_versions


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


def _run_in_copy(package_copy: Path, script: str) -> str:
    """Run `script` in a fresh Python that imports qfm_lib from `package_copy` (real imports, real reloads)."""
    import subprocess
    import textwrap

    env = {**os.environ, "PYTHONPATH": str(package_copy.parent)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          cwd=package_copy.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_module_edited_but_not_reloaded_is_an_error(package_copy):
    # imported, then edited before this process made any key: the running code is not the code the key
    # would name. A reload lifts the error, a failed %autoreload does not; an edited comment is none.
    out = _run_in_copy(package_copy, f"""
        import importlib
        from pathlib import Path
        from IPython.extensions.autoreload import superreload
        from qfm_lib import cache, images
        file = Path(images.__file__)
        assert file.resolve() == Path({str(package_copy / "images.py")!r}).resolve()

        def key(label):
            try:
                return cache.code_digest("images")
            except RuntimeError as err:
                print(label, "refused:", err)

        file.write_text(file.read_text() + "EXTRA = 1\\n")  # before this process made any key
        key("edited")
        importlib.reload(images)
        before = key("reloaded")
        file.write_text(file.read_text() + "\\n# a comment\\n")
        print("comment:", key("comment") == before)
        file.write_text(file.read_text() + "BOOM = 1 / 0\\n")
        try:
            superreload(images)
        except ZeroDivisionError:
            pass
        key("failed autoreload")
        """)
    assert "edited refused:" in out and "images.py changed after this process imported it" in out
    assert "restart the kernel" in out
    assert "reloaded refused" not in out and "comment: True" in out
    assert "failed autoreload refused:" in out


def test_a_full_autoreload_of_the_package_keeps_the_check(package_copy):
    # IPython's full reload empties the package's globals while its finder still runs
    out = _run_in_copy(package_copy, """
        from pathlib import Path
        from IPython.extensions.autoreload import superreload
        import qfm_lib
        from qfm_lib import cache
        file = Path(qfm_lib.__file__)
        file.write_text(file.read_text() + "EXTRA = 1\\n")
        try:
            cache.code_digest("ensembles")
        except RuntimeError:
            print("refused")
        superreload(qfm_lib)
        print("reloaded:", qfm_lib.EXTRA, len(cache.code_digest("ensembles")))
        file.write_text(file.read_text() + "EXTRA = 2\\n")
        try:
            cache.code_digest("ensembles")
        except RuntimeError:
            print("refused again")
        """)
    assert out.split() == ["refused", "reloaded:", "1", "24", "refused", "again"]


def test_row_workers_run_the_code_on_disk(package_copy):
    # loky keeps its workers (and the code they imported, and their environment) between pools;
    # protocol.row_workers keeps them while qfm_lib's sources and the environment are unchanged and
    # starts fresh ones once either changed (not in a block inside another), whether or not this
    # process reloaded anything (even protocol itself). A worker of a plain pool, kept with the old
    # code, refuses to make a key. (A pool whose job fails shuts loky's workers down by itself, so
    # that comes last.)
    out = _run_in_copy(package_copy, """
        import importlib, multiprocessing, os, time
        from pathlib import Path
        from joblib import Parallel, delayed
        from qfm_lib import images, protocol

        def extra():
            time.sleep(0.3)  # so that both workers take jobs
            from qfm_lib import images
            return getattr(images, "EXTRA", None)

        def key():
            from qfm_lib import cache
            return cache.code_digest("images")

        def pids():
            time.sleep(0.3)
            return os.getpid()

        def mark():
            time.sleep(0.3)
            return os.environ.get("QFM_TEST_MARK")

        def pool(job):
            return Parallel(n_jobs=2, backend="loky")(delayed(job)() for _ in range(4))

        def row_pool(job):
            with protocol.row_workers():
                return pool(job)

        file = Path(images.__file__)
        print("first:", row_pool(extra), row_pool(key)[0] == key())
        row_pool(pids)
        kept = {p.pid for p in multiprocessing.active_children()}
        print("kept workers:", set(row_pool(pids)) <= kept)
        with protocol.row_workers():
            file.write_text(file.read_text() + "EXTRA = 1\\n")
            print("inner block:", row_pool(extra))
        print("after an edit:", row_pool(extra), not kept & set(row_pool(pids)))
        os.environ["QFM_TEST_MARK"] = "set"
        print("after an environment change:", row_pool(mark))
        importlib.reload(protocol)
        file.write_text(file.read_text() + "EXTRA = 2\\n")
        print("protocol reloaded:", row_pool(extra))
        print("plain pool:", pool(extra))
        file.write_text(file.read_text() + "EXTRA = 3\\n")
        try:
            pool(key)
        except RuntimeError as err:
            print("plain pool refused:", err)
        """)
    assert "first: [None, None, None, None] True" in out
    assert "kept workers: True" in out
    assert "inner block: [None, None, None, None]" in out  # a block inside another leaves the pool alone
    assert "after an edit: [1, 1, 1, 1] True" in out
    assert "after an environment change: ['set', 'set', 'set', 'set']" in out
    assert "protocol reloaded: [2, 2, 2, 2]" in out
    assert "plain pool: [2, 2, 2, 2]" in out
    assert "plain pool refused:" in out and "this worker process imported it before the change" in out


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


def test_an_atomic_write_gets_the_permissions_open_would_give(tmp_path):
    """mkstemp's temp files are owner-only (0o600); a file the user asked for must not be."""
    from qfm_lib.cache import atomic_write

    (tmp_path / "plain.csv").write_text("a\n")
    written = atomic_write(tmp_path / "atomic.csv", lambda fh: fh.write("a\n"), "w")
    assert written.stat().st_mode & 0o777 == (tmp_path / "plain.csv").stat().st_mode & 0o777
