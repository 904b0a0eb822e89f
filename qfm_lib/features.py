"""Multi-stage backbone features per image, cached on disk.

For each view of an image (the whole image at native resolution, or one of K seeded random crops)
we record, for every backbone stage (stem, block0..blockN, head), the channel-wise mean and standard
deviation of its activation map. The head's channel mean is the backbone's pooled embedding (what
its ImageNet classifier reads). Layout of one view's vector: for each stage in order, [mean(C), std(C)].

Cache: one folder per entry under <cache>/features/<key>, where the key hashes everything the
numbers depend on (image names and content hashes, backbone and weights hash, normalisation,
resize/crop parameters, FEATURE_VERSION). Work proceeds in chunks, each written atomically into
<key>.partial/; the folder is renamed to <key> only when complete. A killed run resumes from its
finished chunks; a bad image aborts with an error naming it and removes the partial folder.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .backbones import DEFAULT_BACKBONE, Backbone, file_sha256, load_backbone
from .images import ImageError, load_rgb, resize_shorter
from .cache import atomic_write, digest
from .paths import cache_dir

FEATURE_VERSION = 1
CHUNK_IMAGES = 50


@dataclass(frozen=True)
class FeatureSpec:
    """What to extract. n_crops=0 means the whole image only (native resolution unless resize)."""

    backbone: str = DEFAULT_BACKBONE
    resize: int | None = None      # shorter side in pixels; None keeps native resolution
    n_crops: int = 0
    crop_size: int = 224
    crop_seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < 32:
            raise ValueError(f"resize must be None or >= 32, got {self.resize}")
        if self.n_crops < 0:
            raise ValueError(f"n_crops must be >= 0, got {self.n_crops}")
        if self.crop_size < 32:
            raise ValueError(f"crop_size must be >= 32, got {self.crop_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Features:
    """Features of a list of images: `full` (N, D) and optionally `crops` (N, K, D) with boxes."""

    names: list[str]
    stage_names: list[str]
    stage_channels: list[int]
    full: np.ndarray | None = None
    crops: np.ndarray | None = None
    crop_boxes: np.ndarray | None = None  # (N, K, 4): top, left, height, width
    meta: dict = field(default_factory=dict)

    def stage_slice(self, stage: str, part: str = "meanstd") -> slice:
        """Columns of one stage: part is 'meanstd', 'mean' or 'std'."""
        if stage not in self.stage_names:
            raise ValueError(f"unknown stage {stage!r}; stages are {self.stage_names}")
        if part not in ("meanstd", "mean", "std"):
            raise ValueError(f"part must be meanstd, mean or std, got {part!r}")
        start = 2 * sum(self.stage_channels[: self.stage_names.index(stage)])
        c = self.stage_channels[self.stage_names.index(stage)]
        return {"meanstd": slice(start, start + 2 * c), "mean": slice(start, start + c),
                "std": slice(start + c, start + 2 * c)}[part]

    def stage(self, stage: str, part: str = "meanstd", view: str = "full") -> np.ndarray:
        """One stage's columns of the full-image (view='full') or crop (view='crops') features."""
        data = self.full if view == "full" else self.crops
        if data is None:
            raise ValueError(f"no {view} features were extracted")
        return data[..., self.stage_slice(stage, part)]

    def embedding(self, view: str = "full") -> np.ndarray:
        """The pooled embedding: the head stage's channel means."""
        return self.stage("head", "mean", view)

    def select(self, names: Sequence[str]) -> "Features":
        """The rows of `names`, in that order."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"{len(missing)} images have no features, e.g. {missing[:3]}")
        rows = np.array([index[n] for n in names], dtype=int)
        take = lambda a: None if a is None else a[rows]  # noqa: E731
        return Features(list(names), self.stage_names, self.stage_channels, take(self.full),
                        take(self.crops), take(self.crop_boxes), dict(self.meta))


def crop_boxes_for(name: str, height: int, width: int, spec: FeatureSpec) -> np.ndarray:
    """K seeded random crop boxes (top, left, h, w) for one image; same name+seed, same boxes."""
    if min(height, width) < spec.crop_size:
        raise ImageError(f"{name}: image is {width}x{height}, smaller than crop_size {spec.crop_size}")
    rng = np.random.default_rng([spec.crop_seed, zlib.crc32(name.encode())])
    tops = rng.integers(0, height - spec.crop_size + 1, spec.n_crops)
    lefts = rng.integers(0, width - spec.crop_size + 1, spec.n_crops)
    size = np.full(spec.n_crops, spec.crop_size)
    return np.stack([tops, lefts, size, size], axis=1).astype(np.int32)


class _StageRecorder:
    """Forward hooks that keep each stage's channel mean and std."""

    def __init__(self, backbone: Backbone):
        self.stats: list[torch.Tensor] = []
        self.hooks = [m.register_forward_hook(self._hook) for m in backbone.stage_modules()]

    def _hook(self, _module, _inputs, out: torch.Tensor) -> None:
        flat = out.float().flatten(2)  # two passes: stable, and ~5x faster than torch.std_mean on CPU
        mean = flat.mean(2)
        std = (flat - mean[..., None]).square_().mean(2).sqrt_()
        self.stats.extend([mean, std])

    def run(self, backbone: Backbone, batch: torch.Tensor) -> np.ndarray:
        self.stats = []
        with torch.inference_mode():
            backbone.model.forward_features(batch)
        return torch.cat(self.stats, dim=1).numpy().astype(np.float32)

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def to_tensor(img, backbone: Backbone, resize: int | None = None) -> torch.Tensor:
    """PIL RGB -> normalised CHW float tensor (bicubic resize of the shorter side if asked)."""
    arr = torch.from_numpy(np.asarray(resize_shorter(img, resize)).copy()).permute(2, 0, 1).float()
    scale = torch.tensor([1.0 / (255.0 * s) for s in backbone.std]).view(3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(backbone.mean, backbone.std)]).view(3, 1, 1)
    return arr.mul_(scale).sub_(shift).contiguous()  # == (x / 255 - mean) / std


def _views(path: Path, name: str, backbone: Backbone, spec: FeatureSpec, crops: bool):
    """Decode one image into its views: [whole image] or K crops (plus their boxes)."""
    img = load_rgb(path)
    if not crops:
        return [to_tensor(img, backbone, spec.resize)], None
    full = to_tensor(img, backbone, spec.resize)
    boxes = crop_boxes_for(name, full.shape[1], full.shape[2], spec)
    return [full[:, t:t + h, l:l + w] for t, l, h, w in boxes], boxes


def _forward_views(recorder: _StageRecorder, backbone: Backbone, views: list[torch.Tensor],
                   batch_size: int) -> np.ndarray:
    """Run views through the backbone, batching consecutive views of the same size."""
    out, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and end - start < batch_size and views[end].shape == views[start].shape:
            end += 1
        out.append(recorder.run(backbone, torch.stack(views[start:end])))
        start = end
    return np.concatenate(out)


def cache_key(names: Sequence[str], hashes: Sequence[str], backbone: Backbone, spec: FeatureSpec,
              crops: bool) -> str:
    params = {"version": FEATURE_VERSION, "backbone": backbone.name,
              "weights_sha256": backbone.weights_sha256, "mean": backbone.mean, "std": backbone.std,
              "resize": spec.resize, "view": "crops" if crops else "full"}
    if crops:
        params.update(n_crops=spec.n_crops, crop_size=spec.crop_size, crop_seed=spec.crop_seed)
    return digest(params, names_and_hashes(names, hashes))


def names_and_hashes(names: Sequence[str], hashes: Sequence[str]) -> bytes:
    """The image list as bytes for a cache key: name and content hash per image."""
    return "".join(f"{name}\0{sha}\n" for name, sha in zip(names, hashes)).encode()


def _extract_entry(paths: list[Path], names: list[str], backbone: Backbone, spec: FeatureSpec,
                   crops: bool, entry: Path, progress: bool) -> None:
    partial = entry.with_name(entry.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    chunks = [range(i, min(i + CHUNK_IMAGES, len(paths))) for i in range(0, len(paths), CHUNK_IMAGES)]
    todo = [c for c in chunks if not (partial / f"chunk_{c.start:06d}.npz").exists()]
    recorder = _StageRecorder(backbone)
    bar = tqdm(total=len(paths), initial=len(paths) - sum(len(c) for c in todo), unit="img",
               desc=f"{backbone.name} {'crops' if crops else 'full'}", disable=not progress)
    try:
        # Decoding runs inline: torch's intra-op threads already occupy both cores, and a decode
        # thread beside them measured slower (benchmarks/bench_features.py).
        for chunk in todo:
            feats, boxes = [], []
            for i in chunk:
                views, box = _views(paths[i], names[i], backbone, spec, crops)
                feats.append(_forward_views(recorder, backbone, views, spec.batch_size))
                boxes.append(box)
                bar.update(1)
            arrays = {"features": np.stack(feats) if crops else np.concatenate(feats)}
            if crops:
                arrays["boxes"] = np.stack(boxes)
            atomic_write(partial / f"chunk_{chunk.start:06d}.npz", lambda fh, a=arrays: np.savez(fh, **a))
    except ImageError:
        shutil.rmtree(partial, ignore_errors=True)  # the key hashes the bad file: nothing to resume
        raise
    finally:
        recorder.close()
        bar.close()
    meta = {"n_images": len(paths), "crops": crops, "spec": asdict(spec),
            "backbone": backbone.name, "weights_sha256": backbone.weights_sha256,
            "stage_names": backbone.stage_names, "stage_channels": backbone.stage_channels}
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(partial, entry)


def _load_entry(entry: Path) -> tuple[np.ndarray, np.ndarray | None]:
    feats, boxes = [], []
    for chunk in sorted(entry.glob("chunk_*.npz")):
        with np.load(chunk) as data:
            feats.append(data["features"])
            if "boxes" in data:
                boxes.append(data["boxes"])
    return np.concatenate(feats), (np.concatenate(boxes) if boxes else None)


def content_hashes(table: pd.DataFrame) -> list[str]:
    """The sha256 column when the table has one (verified at load), else hash each file."""
    if "sha256" in table and table["sha256"].notna().all():
        return list(table["sha256"])
    hashes = []
    for path in table["path"]:
        if not Path(path).is_file():
            raise ImageError(f"{path}: image file not found")
        hashes.append(file_sha256(path))
    return hashes


def extract_features(table: pd.DataFrame, spec: FeatureSpec = FeatureSpec(),
                     backbone: Backbone | None = None, progress: bool = True,
                     root: Path | None = None) -> Features:
    """Features of every image in a canonical table (columns image, path[, sha256]), cached.

    Always extracts the whole-image view; adds K crops per image when spec.n_crops > 0.
    """
    if table["image"].duplicated().any():
        dup = table.loc[table["image"].duplicated(), "image"].iloc[0]
        raise ValueError(f"duplicate image name {dup!r} in the table")
    backbone = backbone or load_backbone(spec.backbone)
    if backbone.name != spec.backbone:
        raise ValueError(f"spec asks for {spec.backbone}, backbone is {backbone.name}")
    names, paths = list(table["image"]), [Path(p) for p in table["path"]]
    hashes = content_hashes(table)
    base = (root or cache_dir()) / "features"
    out = Features(names, backbone.stage_names, backbone.stage_channels)
    for crops in ([False, True] if spec.n_crops else [False]):
        entry = base / cache_key(names, hashes, backbone, spec, crops)
        if not entry.is_dir():
            _extract_entry(paths, names, backbone, spec, crops, entry, progress)
        feats, boxes = _load_entry(entry)
        if crops:
            out.crops, out.crop_boxes = feats, boxes
        else:
            out.full = feats
        out.meta["crops_entry" if crops else "full_entry"] = str(entry)
    out.meta.update(backbone=backbone.name, weights_sha256=backbone.weights_sha256,
                    spec=asdict(spec), feature_version=FEATURE_VERSION)
    return out
