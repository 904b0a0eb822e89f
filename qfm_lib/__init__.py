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

__version__ = "0.1.0"


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
