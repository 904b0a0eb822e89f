"""On-disk cache helpers: keys hashed from what a result depends on, files written atomically
(temp file in the same folder, then os.replace) so an interrupted run never leaves a corrupt entry."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
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
    """The qfm_lib modules that `module` imports, directly or not (itself included), sorted."""
    here, seen, todo = Path(__file__).parent, set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((here / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                todo += [node.module] if node.module else [a.name for a in node.names]
    return sorted(f"{m}.py" for m in seen)


@functools.lru_cache(maxsize=None)
def code_digest(module: str, skip: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> str:
    """A hash of the code of qfm_lib `module` and of every qfm_lib module it imports, docstrings and
    comments left out: the part of a cache key that says which code computed the entry, so editing
    that code recomputes it and editing its description does not. skip: (file, names) pairs, the
    module-level assignments to those names in that file left out (see code_only)."""
    here, skipped = Path(__file__).parent, dict(skip)
    return digest([(f, code_only((here / f).read_text(), skipped.get(f, ()))) for f in code_files(module)])


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


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call write(fh) on a temp file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
