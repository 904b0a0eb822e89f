"""Shared fixtures: the real LIVEC data root and an isolated cache per test session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("QFM_DATA_ROOT", PROJECT.parent / "shared" / "data"))
    if not (root / "livec" / "labels.csv").is_file():
        pytest.fail(f"real LIVEC data not found under {root}: set QFM_DATA_ROOT (make test does)")
    return root


@pytest.fixture(scope="session")
def livec(data_root):
    from qfm_lib.data import load_dataset

    return load_dataset("livec", root=data_root)


@pytest.fixture(scope="session")
def lite0():
    from qfm_lib.backbones import load_backbone

    return load_backbone("tf_efficientnet_lite0")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of qfm_lib's sources that cache.code_files and code_digest read instead of the real ones;
    every module's digest from the copy is first checked to equal the real one."""
    import shutil

    from qfm_lib import cache

    real = Path(cache.__file__).parent
    copy = tmp_path / "qfm_lib"
    shutil.copytree(real, copy, ignore=shutil.ignore_patterns("__pycache__"))
    modules = sorted(f.stem for f in real.glob("*.py") if f.stem != "__init__")
    cache.code_digest.cache_clear()
    digests = [cache.code_digest(m) for m in modules]
    monkeypatch.setattr(cache, "_HERE", copy)
    cache.code_digest.cache_clear()
    assert [cache.code_digest(m) for m in modules] == digests
    yield copy
    cache.code_digest.cache_clear()


@pytest.fixture
def fast_variants(monkeypatch):
    """The registry's variants with few epochs, so the protocol runs in seconds."""
    from qfm_lib import protocol
    from qfm_lib.decoder import DecoderConfig

    quick = {"max_epochs": 8, "patience": 8}
    # tail_rate 0: these synthetic tokens have no backbone to learn the tail of (test_tail.py and the
    # smoke batch train it on real token maps)
    tiny = {"window": 2, "dim": 16, "heads": 2, "gate_hidden": 8, "batch_images": 16, "max_epochs": 4, "patience": 4,
            "tail_rate": 0.0}

    def fast(cfg):
        return type(cfg)(**{**cfg.__dict__, **(tiny if isinstance(cfg, DecoderConfig) else quick)})

    table = {name: (protocol.Variant(v.kind, fast(v.config), v.eps_from) if v.config is not None else v)
             for name, v in protocol.VARIANTS.items()}
    monkeypatch.setattr(protocol, "VARIANTS", table)
    return table


def write_image(path: Path, size=(64, 48), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65535, (size[1], size[0]))).astype(np.uint16))
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def outputs_on_thread_counts(compute, counts=(1, 2)) -> list:
    """compute() once on each torch thread count, the process's own count restored afterwards: for tests
    that what is cached has the same bits whatever thread count computed it."""
    import torch

    threads = torch.get_num_threads()
    outs = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            outs.append(compute())
    finally:
        torch.set_num_threads(threads)
    return outs
