"""Scoring image files with a saved final model (`qfm predict`)."""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from . import __version__
from .backbones import load_backbone
from .cache import atomic_write
from .features import FEATURE_VERSION, FeatureSpec, _StageRecorder, to_tensor
from .images import ImageError, load_rgb
from .models import Trained
from .paths import PROJECT_ROOT

DEFAULT_MODEL = PROJECT_ROOT / "models" / "qfm_livec.pt"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def training_data_hash(table: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for name, sha, mos in zip(table["image"], table["sha256"], table["mos"]):
        digest.update(f"{name}\0{sha}\0{mos:.6f}\n".encode())
    return digest.hexdigest()


def save_model(trained: Trained, path: str | Path, backbone: str, weights_sha256: str, spec: FeatureSpec,
               table: pd.DataFrame, extra: dict | None = None) -> Path:
    payload = {"model": trained.state(), "backbone": backbone, "weights_sha256": weights_sha256,
               "feature_spec": asdict(spec),
               "feature_version": FEATURE_VERSION, "qfm_lib_version": __version__,
               "training_data_sha256": training_data_hash(table), "n_training_images": len(table),
               **(extra or {})}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_model(path: str | Path = DEFAULT_MODEL) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: run `make figures` (notebook 06 trains and saves the "
                                f"final model there) or pass --model FILE")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["trained"] = Trained.from_state(payload["model"])
    return payload


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expand to the image files inside them (recursively, sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def predict_images(paths: Iterable[str | Path], model: str | Path | dict = DEFAULT_MODEL) -> pd.DataFrame:
    """Scores (on the training dataset's MOS scale) for image files or folders. A bad image gets
    its error in the `error` column and a NaN score; the others are scored as usual."""
    payload = model if isinstance(model, dict) else load_model(model)
    backbone = load_backbone(payload["backbone"])
    if backbone.weights_sha256 != payload["weights_sha256"]:
        raise ValueError(f"backbone weights differ from those the model was trained on "
                         f"({backbone.weights_sha256[:12]} vs {payload['weights_sha256'][:12]})")
    resize = payload["feature_spec"].get("resize")
    recorder = _StageRecorder(backbone)
    rows = []
    try:
        for path in expand_paths(paths):
            try:
                feats = recorder.run(backbone, to_tensor(load_rgb(path), backbone, resize)[None])
                rows.append({"image": str(path), "score": float(payload["trained"].predict(feats)[0]), "error": ""})
            except ImageError as err:
                rows.append({"image": str(path), "score": np.nan, "error": str(err)})
    finally:
        recorder.close()
    return pd.DataFrame(rows, columns=["image", "score", "error"])
