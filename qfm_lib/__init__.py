"""qfm_lib: the thin library behind the NR-IQA study notebooks.

Modules: data (canonical datasets and converters), backbones (timm with real ImageNet weights),
features (cached multi-stage features and token maps, ONNX Runtime extraction), metrics
(PLCC/SRCC/KRCC/RMSE), splits (seeded splits), pairs (semantic-noise pair mining), models (pooled-vector
models), tokens (token maps and their windows), decoder (the token decoder and its training loop),
qfm_iqm and local_manifold (the two methods on token windows), protocol (variant registry, cached result rows and models), stats,
findings, saliency, distortions, batch (papermill runner), reproduce (regenerated tables against
committed ones), cli (`qfm predict`, `qfm compare`).
"""
from __future__ import annotations

import sys
from importlib.machinery import PathFinder

__version__ = "0.1.0"


def _record_source(spec) -> None:
    """Keep the module's source on its spec (`spec.qfm_source`): the code a module runs is the code its
    spec was found with, which cache.code_digest checks against the code on disk. (Builtins only: a
    full %autoreload of this package empties its globals while the finder below still runs.)"""
    try:
        with open(spec.origin, "rb") as fh:
            spec.qfm_source = fh.read()
    except (AttributeError, OSError, TypeError):  # no spec or no source file: nothing to check against
        pass


class _RecordSources:
    """Finds qfm_lib and its modules as Python's own path finder does, and keeps each one's source on
    the spec it finds, for an import or a reload (a reload finds a new spec; a failed one leaves the
    module its old spec), so that an edit made after the import is told from the code running. First
    on sys.meta_path, so a later finder never sees qfm_lib's modules."""
    records_qfm_lib_sources = True

    @staticmethod
    def find_spec(name: str, path=None, target=None, _package=__name__, _find=PathFinder.find_spec,
                  _record=_record_source):  # (bound here: see _record_source)
        if name != _package and not name.startswith(f"{_package}."):
            return None
        spec = _find(name, path, target)
        if spec is not None and str(spec.origin).endswith(".py"):
            _record(spec)
        return spec


_record_source(__spec__)  # (the first import found this module before the finder below was there)
if not any(getattr(finder, "records_qfm_lib_sources", False) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RecordSources)


def print_versions() -> dict[str, str]:
    """Print and return the versions that a notebook's numbers depend on (first cell of every notebook)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "torchvision", "onnxruntime", "timm", "numpy", "scipy", "pandas", "scikit-learn",
             "umap-learn", "matplotlib", "seaborn", "papermill"]
    found = {"python": platform.python_version(), "qfm_lib": __version__}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    for name, ver in found.items():
        print(f"{name:>14}: {ver}")
    return found
