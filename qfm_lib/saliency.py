"""Visual saliency of crops: which of an image's seeded crops is the anchor (the second paper).

Method: spectral-residual saliency (X. Hou and L. Zhang, "Saliency Detection: A Spectral Residual
Approach", CVPR 2007), weight-free, as implemented by OpenCV's contrib module
(cv2.saliency.StaticSaliencySpectralResidual: the log-amplitude spectrum of a 64x64 grey image minus
its local average, back-transformed with the original phase, squared and blurred). A crop's
saliency is the mean of the map inside its box; the most salient crop is the anchor. Scores are
cached on disk keyed by the images' content hashes and the crop boxes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .cache import atomic_write, cache_path, code_digest, library_versions
from .features import Features, content_hashes, names_and_hashes
from .images import load_rgb, resize_shorter

SALIENCY_VERSION = 1
SALIENCY_LIBRARIES = ("numpy", "PIL", "cv2")  # their versions key the maps too (decoding, the saliency model)


def saliency_map(rgb: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency of an (H, W, 3) uint8 image: (H, W) float32, scaled to [0, 1]."""
    import cv2

    detector = cv2.saliency.StaticSaliencySpectralResidual_create()
    ok, sal = detector.computeSaliency(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    if not ok:
        raise RuntimeError("OpenCV spectral-residual saliency failed")
    sal = sal.astype(np.float32)
    return (sal - sal.min()) / max(float(np.ptp(sal)), 1e-12)


def box_means(sal: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean saliency inside each (top, left, height, width) box."""
    return np.array([sal[t:t + h, l:l + w].mean() for t, l, h, w in boxes], dtype=np.float32)


def image_for_boxes(path: str, resize: int | None) -> np.ndarray:
    """The image in the coordinates its crop boxes were drawn in (features.to_tensor's resize)."""
    return np.asarray(resize_shorter(load_rgb(path), resize))


def crop_saliency(table: pd.DataFrame, feats: Features, progress: bool = True) -> np.ndarray:
    """(N, K) saliency of each image's K crops (feats.crop_boxes), in table order; cached."""
    if feats.crop_boxes is None:
        raise ValueError("these features have no crops: extract with n_crops > 0")
    if list(table["image"]) != list(feats.names):
        raise ValueError("table and features list different images")
    resize = feats.meta.get("spec", {}).get("resize")
    key = {"v": SALIENCY_VERSION, "code": code_digest("saliency"), "libraries": library_versions(*SALIENCY_LIBRARIES),
           "method": "opencv spectral residual", "resize": resize}
    extra = names_and_hashes(table["image"], content_hashes(table)) + feats.crop_boxes.tobytes()
    path = cache_path("saliency", key, ".npy", extra)
    if path.is_file():
        return np.load(path)
    scores = np.stack([box_means(saliency_map(image_for_boxes(p, resize)), boxes)
                       for p, boxes in tqdm(list(zip(table["path"], feats.crop_boxes)),
                                            desc="crop saliency", disable=not progress)])
    atomic_write(path, lambda fh: np.save(fh, scores))
    return scores


def anchor_order(scores: np.ndarray) -> np.ndarray:
    """Per image, crop indices from most to least salient (column 0 is the anchor)."""
    return np.argsort(-scores, axis=1, kind="stable")


def cell_saliency(table: pd.DataFrame, grid: np.ndarray, resize: int | None = None,
                  progress: bool = True) -> np.ndarray:
    """(N, H, W) spectral-residual saliency averaged over each cell of every image's token grid
    (grid: (N, 2) rows, cols; zero-padded to the largest grid); cached like crop_saliency."""
    import cv2

    grid = np.asarray(grid)
    key = {"v": SALIENCY_VERSION, "code": code_digest("saliency"), "libraries": library_versions(*SALIENCY_LIBRARIES),
           "method": "opencv spectral residual, token cells", "resize": resize}
    extra = names_and_hashes(table["image"], content_hashes(table)) + grid.astype(np.int32).tobytes()
    path = cache_path("saliency", key, ".npy", extra)
    if path.is_file():
        return np.load(path)
    out = np.zeros((len(table), *grid.max(0)), dtype=np.float32)
    for i, (p, (h, w)) in enumerate(tqdm(list(zip(table["path"], grid)), desc="cell saliency", disable=not progress)):
        out[i, :h, :w] = cv2.resize(saliency_map(image_for_boxes(p, resize)), (int(w), int(h)),
                                    interpolation=cv2.INTER_AREA)
    atomic_write(path, lambda fh: np.save(fh, out))
    return out
