"""On-disk cache helpers: keys hashed from what a result depends on, files written atomically
(temp file in the same folder, then os.replace) so an interrupted run never leaves a corrupt entry."""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from .paths import cache_dir


def digest(key: Any, extra: bytes = b"") -> str:
    """A 24-hex-digit hash of a JSON-able key (non-JSON values by str) plus optional raw bytes."""
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    h.update(extra)
    return h.hexdigest()[:24]


def code_files(module: str) -> list[str]:
    """The qfm_lib modules that `module` imports, directly or not (itself included), sorted. Imports
    under `if TYPE_CHECKING:` are left out (annotations only); `from . import name` of a name that is
    not a module means __init__.py."""
    return list(_source_hashes(module))


def code_digest(module: str, skip: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> str:
    """A hash of the code of qfm_lib `module` and of every qfm_lib module it imports, docstrings and
    comments left out: the part of a cache key that says which code computed the entry, so editing
    that code recomputes it and editing its description does not. skip: (file, names) pairs, the
    module-level assignments to those names in that file left out (see code_only).

    The files are read at every call (their parsed code is remembered by content hash), so a module
    reloaded in a running kernel (`%autoreload 2 --full`, README) gets its new key. A module whose code was edited on
    disk since this process imported it, and not reloaded, would file the old code's results under the
    new code's key: that is an error (`_source_hash`), which asks for a kernel restart; an edited
    comment or docstring is not."""
    skipped = dict(skip)
    return _digest_of(tuple((f, h, skipped.get(f, ())) for f, h in _source_hashes(module).items()))


def _source_hashes(module: str) -> dict[str, str]:
    """{file: sha256 of its source} for `module` and the qfm_lib modules it imports, sorted by file;
    each file read once."""
    found, todo = {}, [module]
    while todo:
        name = todo.pop()
        if f"{name}.py" not in found:
            found[f"{name}.py"] = _source_hash(name)
            todo += _imports(name, found[f"{name}.py"])
    return dict(sorted(found.items()))


def library_versions(*modules: str) -> dict[str, str]:
    """The `__version__` of each library in `modules` (import names: "PIL", "cv2", "torch"): part of a
    cache key wherever an upgrade could change the cached numbers (a JPEG decoder, a kernel, a solver).
    A CPU and a CUDA build of torch ("2.14.1+cpu", "+cu130") count as different versions."""
    from importlib import import_module

    return {m: str(import_module(m).__version__) for m in modules}


_HERE = Path(__file__).parent  # qfm_lib's sources (a test may point it at a copy)
_SOURCES: dict[str, bytes] = {}  # sha256 -> the source read with it
# module -> (its import's spec, its source when this process first read it): for a module whose spec
# does not carry its source (qfm_lib's finder, in __init__.py, did not find it)
_FIRST_SEEN: dict[str, tuple[object, bytes]] = {}


def _source_hash(module: str) -> str:
    """The hash of `module`'s source file; an error if this process imported the module from that file
    and its code (not a comment or docstring) changed since, without a reload."""
    path = _HERE / f"{module}.py"
    source = path.read_bytes()
    found = hashlib.sha256(source).hexdigest()
    _SOURCES.setdefault(found, source)
    name = __package__ if module == "__init__" else f"{__package__}.{module}"
    loaded = sys.modules.get(name)
    if loaded is None or Path(getattr(loaded, "__file__", "") or "") != path:
        return found
    running = _running_source(name, loaded, source)
    ran = hashlib.sha256(running).hexdigest()
    _SOURCES.setdefault(ran, running)
    if ran != found and _code(path.name, ran, ()) != _code(path.name, found, ()):
        where = ("this worker process imported it before the change: run the pool inside protocol.row_workers(), "
                 "which starts its workers afresh once qfm_lib's sources changed, so they import the code on disk, "
                 "and restart the kernel if it imported the module too" if multiprocessing.parent_process()
                 else "restart the kernel (importlib.reload of this module alone would leave the names other "
                      "modules imported from it running the old code)")
        raise RuntimeError(f"{path} changed after this process imported it, so the code running is not the "
                           f"code on disk that its cache keys would name: {where}")
    return found


def _running_source(name: str, loaded: Any, source: bytes) -> bytes:
    """The source of the code that module `name` runs: the source its spec was found with (qfm_lib's
    finder keeps it there; a reload finds a new spec), else the source this process first read for it."""
    recorded = getattr(loaded.__spec__, "qfm_source", None)
    if recorded is not None:
        return recorded
    seen = _FIRST_SEEN.get(name)
    if seen is None or seen[0] is not loaded.__spec__:
        seen = _FIRST_SEEN[name] = (loaded.__spec__, source)
    return seen[1]


def sources_digest() -> str:
    """A hash of every qfm_lib source file on disk: what the code of a worker process started now would be."""
    return digest(sorted((f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for f in _HERE.glob("*.py")))


@functools.lru_cache(maxsize=None)
def _imports(module: str, source_hash: str) -> tuple[str, ...]:
    found, todo = [], list(ast.parse(_SOURCES[source_hash].decode()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node.test):
            todo += node.orelse
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.append(node.module)
            else:
                found += [a.name if (_HERE / f"{a.name}.py").is_file() else "__init__" for a in node.names]
        todo += ast.iter_child_nodes(node)
    return tuple(sorted(set(found)))


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.lru_cache(maxsize=None)
def _digest_of(files: tuple[tuple[str, str, tuple[str, ...]], ...]) -> str:
    return digest([(f, _code(f, source_hash, names)) for f, source_hash, names in files])


@functools.lru_cache(maxsize=None)
def _code(file: str, source_hash: str, skip: tuple[str, ...]) -> str:
    return code_only(_SOURCES[source_hash].decode(), skip)


def _clear_caches() -> None:
    _FIRST_SEEN.clear()
    for f in (_imports, _digest_of, _code):
        f.cache_clear()


code_digest.cache_clear = _clear_caches  # type: ignore[attr-defined]  # tests that edit a file in place


def code_only(source: str, skip: tuple[str, ...] = ()) -> str:
    """The module's syntax tree without docstrings: what its code does, not how it is described,
    so editing a comment or a docstring keeps the cached entries. Module-level assignments to the names
    in `skip` are left out too."""
    tree = ast.parse(source)
    tree.body = [node for node in tree.body if not _assigns_only(node, skip)]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _assigns_only(node: ast.stmt, names: tuple[str, ...]) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return bool(targets) and all(isinstance(t, ast.Name) and t.id in names for t in targets)


def cache_path(kind: str, key: Any, suffix: str, extra: bytes = b"") -> Path:
    """<cache>/<kind>/<digest(key)><suffix>, the folder created."""
    folder = cache_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{digest(key, extra)}{suffix}"


def _new_file_mode() -> int:
    """The permissions open() gives a new file here: 0o666 less the umask the process had at import."""
    umask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call write(fh) on a temp file beside `path`, then rename it onto `path`, with the permissions
    open() would give it (mkstemp's are owner-only: a CSV written for the user, or a cache shared
    with a group, would be unreadable to others)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with contextlib.suppress(OSError):  # a file system without permissions (e.g. FAT) keeps its own
            os.fchmod(fd, _NEW_FILE_MODE)
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
