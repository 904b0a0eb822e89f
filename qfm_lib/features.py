"""Multi-stage backbone features per image, cached on disk.

For each view of an image (the whole image at native resolution, or one of K seeded random crops)
we record, for every backbone stage (stem, block0..blockN, head), the channel-wise mean and standard
deviation of its activation map. The head's channel mean is the backbone's pooled embedding (what
its ImageNet classifier reads). Layout of one view's vector: for each stage in order, [mean(C), std(C)].

Token maps (whole-image view only, from the same forward pass): the spatial maps of the stages in
TOKEN_STAGES on the head's stride-32 grid (16x16 for a 500x500 photo). Stages already on that grid
are stored as they are; finer stages are pooled to it, keeping each cell's mean and std. One token
is one cell: a vector of `token_channels` values. All images' cells are stored fp16, row-major
image after image, as one (total cells, C) array in tokens.npy (memory-mapped on load; images of
any size, `token_grid` gives each image's grid). The token decoders (tokens.TokenSet) read them.

Inference engine: the frozen backbone runs under ONNX Runtime by default (FeatureGraph exported once
with torch.onnx, cached under <cache>/onnx/, keyed by backbone, weights, graph version and code); PyTorch
runs the same FeatureGraph as the reference (engine="torch"). Decoding runs in DECODE_THREADS
background threads, DECODE_AHEAD images ahead of the forward pass.

Cache: one folder per entry under <cache>/features/<key>, where the key hashes everything the
numbers depend on (image names and content hashes, backbone and weights hash, normalisation,
resize/crop parameters, engine, FEATURE_VERSION, the versions of FEATURE_LIBRARIES (a Pillow with another
JPEG decoder extracts afresh), and the code of this module and of the qfm_lib modules it imports:
cache.code_digest, so an edit to images.py or backbones.py extracts afresh). Work proceeds in chunks, each written atomically into
<key>.partial/; the folder is renamed to <key> only when complete. A killed run resumes from its
finished chunks; a bad image aborts with an error naming it and removes the partial folder.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import json
import os
import shutil
import warnings
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .backbones import DEFAULT_BACKBONE, Backbone, file_sha256, load_backbone
from .images import ImageError, load_rgb, resize_shorter
from .cache import atomic_write, code_digest, digest, library_versions
from .paths import cache_dir

FEATURE_VERSION = 2  # the features' format; the cache key also holds the code (code_digest)
# stage -> parts stored per token cell (finer stages are pooled to the head's stride-32 grid)
TOKEN_STAGES = {"block3": ("mean", "std"), "block4": ("mean", "std"), "block5": ("mean",),
                "block6": ("mean",), "head": ("mean",)}
CHUNK_IMAGES = 50
ENGINES = ("onnxruntime", "torch")
DEFAULT_BATCH = {"onnxruntime": 1, "torch": 8}  # measured fastest on 2 cores at 500x500
# the libraries whose versions key the cached features and graphs (decoding, export, the forward pass)
FEATURE_LIBRARIES = ("numpy", "PIL", "torch", "timm", "onnx", "onnxruntime")
GRAPH_VERSION = 1  # the exported ONNX graphs are keyed by it and by the code; bump it for a change the code does not show
DECODE_AHEAD = 8   # images decoded ahead of the forward pass
DECODE_THREADS = 2


@dataclass(frozen=True)
class FeatureSpec:
    """What to extract. n_crops=0 means the whole image only (native resolution unless resize)."""

    backbone: str = DEFAULT_BACKBONE
    resize: int | None = None      # shorter side in pixels; None keeps native resolution
    n_crops: int = 0
    crop_size: int = 224
    crop_seed: int = 0
    batch_size: int | None = None  # views per forward call; None: the engine's DEFAULT_BATCH
    engine: str = "onnxruntime"    # or "torch" (the reference)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; engines are {ENGINES}")
        if self.resize is not None and self.resize < 32:
            raise ValueError(f"resize must be None or >= 32, got {self.resize}")
        if self.n_crops < 0:
            raise ValueError(f"n_crops must be >= 0, got {self.n_crops}")
        if self.crop_size < 32:
            raise ValueError(f"crop_size must be >= 32, got {self.crop_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be None or >= 1, got {self.batch_size}")

    @property
    def views_per_call(self) -> int:
        return self.batch_size or DEFAULT_BATCH[self.engine]


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
    tokens: np.ndarray | None = None      # (total cells, C) fp16, memory-mapped, image after image
    token_grid: np.ndarray | None = None  # (N, 2): each image's grid (rows, cols)

    @property
    def token_channels(self) -> list[tuple[str, str, int]]:
        """(stage, part, channel index) of every token channel, in storage order."""
        return token_channel_names(self.stage_names, self.stage_channels)

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
        tokens = None
        if self.tokens is not None:
            cells = self.token_grid.prod(1)
            starts = np.concatenate([[0], np.cumsum(cells)[:-1]])
            tokens = self.tokens[np.concatenate([np.arange(starts[r], starts[r] + cells[r]) for r in rows])]
        return Features(list(names), self.stage_names, self.stage_channels, take(self.full),
                        take(self.crops), take(self.crop_boxes), dict(self.meta), tokens, take(self.token_grid))


def token_channel_names(stage_names: list[str], stage_channels: list[int]) -> list[tuple[str, str, int]]:
    """(stage, part, channel) of each token channel: TOKEN_STAGES in backbone order."""
    out = []
    for stage, c in zip(stage_names, stage_channels):
        for part in TOKEN_STAGES.get(stage, ()):
            out += [(stage, part, i) for i in range(c)]
    return out


def crop_boxes_for(name: str, height: int, width: int, spec: FeatureSpec) -> np.ndarray:
    """K seeded random crop boxes (top, left, h, w) for one image; same name+seed, same boxes."""
    if min(height, width) < spec.crop_size:
        raise ImageError(f"{name}: image is {width}x{height}, smaller than crop_size {spec.crop_size}")
    rng = np.random.default_rng([spec.crop_seed, zlib.crc32(name.encode())])
    tops = rng.integers(0, height - spec.crop_size + 1, spec.n_crops)
    lefts = rng.integers(0, width - spec.crop_size + 1, spec.n_crops)
    size = np.full(spec.n_crops, spec.crop_size)
    return np.stack([tops, lefts, size, size], axis=1).astype(np.int32)


class FeatureGraph(nn.Module):
    """The frozen backbone's forward, returning what the features need: every stage's channel mean
    and std (B, D), then the raw maps of TOKEN_STAGES (pooled to token cells by `token_cells`)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.model = backbone.model
        self.token_index = [i for i, name in enumerate(backbone.stage_names) if name in TOKEN_STAGES]
        self.token_stages = [backbone.stage_names[i] for i in self.token_index]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model  # timm EfficientNet.forward_features, keeping each stage's output
        x = m.bn1(m.conv_stem(x))
        outs = [x]
        for block in m.blocks:
            x = block(x)
            outs.append(x)
        outs.append(m.bn2(m.conv_head(x)))
        stats = []
        for out in outs:
            mean = out.mean((2, 3))
            stats += [mean, (out - mean[..., None, None]).square().mean((2, 3)).sqrt()]  # two passes: stable
        return (torch.cat(stats, 1), *[outs[i] for i in self.token_index])


def token_cells(stages: Sequence[str], maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, H, W, C) token cells on the last map's grid: each stage's per-cell parts (TOKEN_STAGES)."""
    grid = maps[-1].shape[-2:]
    cells = []
    for name, fmap in zip(stages, maps):
        mean = fmap if fmap.shape[-2:] == grid else F.adaptive_avg_pool2d(fmap, grid)
        if "mean" in TOKEN_STAGES[name]:
            cells.append(mean)
        if "std" in TOKEN_STAGES[name]:
            cells.append((F.adaptive_avg_pool2d(fmap.square(), grid) - mean.square()).clamp_min_(0).sqrt_())
    return torch.cat(cells, dim=1).permute(0, 2, 3, 1)


class TorchEngine:
    """FeatureGraph in PyTorch (channels-last: ~1.5x faster on CPU than NCHW). The reference. It runs
    a copy of the backbone, so the caller's model keeps its memory format and mode."""

    name = "torch"

    def __init__(self, backbone: Backbone):
        self.graph = copy.deepcopy(FeatureGraph(backbone)).eval().to(memory_format=torch.channels_last)
        self.token_stages = self.graph.token_stages

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return list(self.graph(batch.contiguous(memory_format=torch.channels_last)))


class OnnxEngine:
    """FeatureGraph under ONNX Runtime (measured 3x PyTorch eager on 2 cores), on this process's
    torch thread count. The graph is exported once per backbone and cached."""

    name = "onnxruntime"

    def __init__(self, backbone: Backbone, root: Path | None = None):
        import onnxruntime as ort

        self.token_stages = [name for name in backbone.stage_names if name in TOKEN_STAGES]  # as FeatureGraph's
        path = onnx_graph(backbone, root)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no busy-waiting between runs: the decode thread needs those cycles (measured +15% overall)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        outs = self.session.run(None, {"image": batch.contiguous().numpy()})
        return [torch.from_numpy(o) for o in outs]


def onnx_graph(backbone: Backbone, root: Path | None = None) -> Path:
    """The exported FeatureGraph of `backbone` (dynamic batch and image size), cached atomically."""
    key = {"backbone": backbone.name, "weights_sha256": backbone.weights_sha256, "graph": GRAPH_VERSION, "code": code_digest("features"),
           "libraries": library_versions(*FEATURE_LIBRARIES),
           "token_stages": {k: list(v) for k, v in TOKEN_STAGES.items()}, "opset": 17}
    path = (root or cache_dir()) / "onnx" / f"{digest(key)}.onnx"
    if not path.is_file():
        graph = FeatureGraph(backbone).eval()
        names = ["stats", *graph.token_stages]

        def export(fh) -> None:
            with warnings.catch_warnings():  # the TorchScript exporter: 1 s here, the dynamo one ~2 min
                warnings.simplefilter("ignore")
                torch.onnx.export(graph, (torch.zeros(1, 3, 256, 256),), fh, dynamo=False, opset_version=17,
                                  input_names=["image"], output_names=names,
                                  dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}})
        atomic_write(path, export)
    return path


def forward_engine(backbone: Backbone, engine: str = "onnxruntime", root: Path | None = None):
    """A callable (B, 3, H, W) tensor -> [stats, *token stage maps] running `engine`."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines are {ENGINES}")
    return OnnxEngine(backbone, root) if engine == "onnxruntime" else TorchEngine(backbone)


def run_views(engine, batch: torch.Tensor, tokens: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled stage statistics (B, D) float32 and, with tokens, token maps (B, H, W, C) fp16."""
    stats, *maps = engine(batch)
    cells = token_cells(engine.token_stages, maps).to(torch.float16).numpy() if tokens else None
    return stats.numpy().astype(np.float32, copy=False), cells


def to_tensor(img, backbone: Backbone, resize: int | None = None) -> torch.Tensor:
    """PIL RGB -> normalised CHW float tensor (bicubic resize of the shorter side if asked)."""
    arr = torch.from_numpy(np.asarray(resize_shorter(img, resize)).copy()).permute(2, 0, 1).float()
    scale = torch.tensor([1.0 / (255.0 * s) for s in backbone.std]).view(3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(backbone.mean, backbone.std)]).view(3, 1, 1)
    return arr.mul_(scale).sub_(shift).contiguous()  # == (x / 255 - mean) / std


def _views(backbone: Backbone, spec: FeatureSpec, crops: bool, path: Path, name: str):
    """Decode one image into its views: [whole image] or K crops (plus their boxes)."""
    img = load_rgb(path)
    if not crops:
        return [to_tensor(img, backbone, spec.resize)], None
    full = to_tensor(img, backbone, spec.resize)
    boxes = crop_boxes_for(name, full.shape[1], full.shape[2], spec)
    return [full[:, t:t + h, l:l + w] for t, l, h, w in boxes], boxes


def _prefetched(decode: Callable, items: Iterable) -> Iterator:
    """decode(*item) for each item, computed in DECODE_THREADS background threads, DECODE_AHEAD items ahead."""
    with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode") as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(decode, *item))
            if len(pending) > DECODE_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _forward_views(engine, views: list[torch.Tensor], batch_size: int,
                   tokens: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run views through the engine, batching consecutive views of the same size. Returns the
    pooled features (V, D) and, with tokens, one (H, W, C) map per view."""
    feats, maps, start = [], [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and end - start < batch_size and views[end].shape == views[start].shape:
            end += 1
        f, t = run_views(engine, torch.stack(views[start:end]), tokens)
        feats.append(f)
        maps += list(t) if t is not None else []
        start = end
    return np.concatenate(feats), maps


def cache_key(names: Sequence[str], hashes: Sequence[str], backbone: Backbone, spec: FeatureSpec,
              crops: bool) -> str:
    params = {"version": FEATURE_VERSION, "code": code_digest("features"), "libraries": library_versions(*FEATURE_LIBRARIES),
              "backbone": backbone.name,
              "weights_sha256": backbone.weights_sha256, "mean": backbone.mean, "std": backbone.std,
              "resize": spec.resize, "view": "crops" if crops else "full", "engine": spec.engine}
    if crops:
        params.update(n_crops=spec.n_crops, crop_size=spec.crop_size, crop_seed=spec.crop_seed)
    return digest(params, names_and_hashes(names, hashes))


def names_and_hashes(names: Sequence[str], hashes: Sequence[str]) -> bytes:
    """The image list as bytes for a cache key: name and content hash per image."""
    return "".join(f"{name}\0{sha}\n" for name, sha in zip(names, hashes)).encode()


def _extract_chunk(engine, decoded: Iterator, n: int, spec: FeatureSpec, crops: bool, bar) -> dict[str, np.ndarray]:
    """The next chunk's arrays (n images from `decoded`): features and crop boxes, or token maps and grids."""
    if crops:
        feats, boxes = [], []
        for _ in range(n):
            views, box = next(decoded)
            feats.append(_forward_views(engine, views, spec.views_per_call, tokens=False)[0])
            boxes.append(box)
            bar.update(1)
        return {"features": np.stack(feats), "boxes": np.stack(boxes)}
    views = [next(decoded)[0][0] for _ in range(n)]  # whole images: batched across images of the same size
    feats, maps = _forward_views(engine, views, spec.views_per_call, tokens=True)
    bar.update(n)
    grid = np.array([m.shape[:2] for m in maps], dtype=np.int32)
    return {"features": feats, "grid": grid, "tokens": np.concatenate([m.reshape(-1, m.shape[2]) for m in maps])}


TOKEN_HEADER = 128  # bytes reserved for tokens.npy's header, written last (the shape is known at the end)


class _TokenFile:
    """tokens.npy of a partial entry, grown chunk by chunk: token bytes are appended before the chunk's
    npz is written, so on resume the finished chunks' grids say how many bytes are valid."""

    def __init__(self, folder: Path, channels: int, finished: list[Path]):
        self.path, self.channels = folder / "tokens.npy", channels
        self.cells = sum(int(np.load(c)["grid"].prod(1).sum()) for c in finished)
        valid = TOKEN_HEADER + 2 * self.cells * channels
        if self.cells and not self.path.is_file():
            raise RuntimeError(f"{folder}: finished chunks but no tokens.npy (a partial entry of an older "
                               f"version?); delete the folder")
        if self.path.is_file() and self.path.stat().st_size < valid:
            raise RuntimeError(f"{folder}: token file shorter than its finished chunks; delete the folder")
        with open(self.path, "ab") as fh:
            fh.truncate(valid)  # drops a killed run's unfinished chunk (or makes the header room)

    def append(self, tokens: np.ndarray) -> None:
        with open(self.path, "ab") as fh:
            fh.write(np.ascontiguousarray(tokens, dtype=np.float16).tobytes())
        self.cells += len(tokens)

    def finish(self) -> None:
        header = repr({"descr": "<f2", "fortran_order": False, "shape": (self.cells, self.channels)})
        prefix = b"\x93NUMPY\x01\x00" + (TOKEN_HEADER - 10).to_bytes(2, "little")
        with open(self.path, "r+b") as fh:
            fh.write(prefix + header.encode().ljust(TOKEN_HEADER - 11) + b"\n")


def _extract_entry(paths: list[Path], names: list[str], backbone: Backbone, spec: FeatureSpec,
                   crops: bool, entry: Path, progress: bool) -> None:
    partial = entry.with_name(entry.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    chunks = [range(i, min(i + CHUNK_IMAGES, len(paths))) for i in range(0, len(paths), CHUNK_IMAGES)]
    todo = [c for c in chunks if not (partial / f"chunk_{c.start:06d}.npz").exists()]
    engine = forward_engine(backbone, spec.engine, entry.parent.parent) if todo else None
    bar = tqdm(total=len(paths), initial=len(paths) - sum(len(c) for c in todo), unit="img",
               desc=f"{backbone.name} {'crops' if crops else 'full + tokens'}", disable=not progress)
    decoded = _prefetched(functools.partial(_views, backbone, spec, crops),
                          ((paths[i], names[i]) for chunk in todo for i in chunk))
    tokens = None if crops else _TokenFile(
        partial, len(token_channel_names(backbone.stage_names, backbone.stage_channels)),
        sorted(partial.glob("chunk_*.npz")))
    try:
        for chunk in todo:
            arrays = _extract_chunk(engine, decoded, len(chunk), spec, crops, bar)
            if tokens is not None:
                tokens.append(arrays.pop("tokens"))
            atomic_write(partial / f"chunk_{chunk.start:06d}.npz", lambda fh, a=arrays: np.savez(fh, **a))
    except ImageError:
        shutil.rmtree(partial, ignore_errors=True)  # the key hashes the bad file: nothing to resume
        raise
    finally:
        decoded.close()
        bar.close()
    if tokens is not None:
        tokens.finish()
        np.save(partial / "grid.npy", np.concatenate([np.load(c)["grid"] for c in sorted(partial.glob("chunk_*.npz"))]))
    meta = {"n_images": len(paths), "crops": crops, "spec": asdict(spec),
            "backbone": backbone.name, "weights_sha256": backbone.weights_sha256,
            "stage_names": backbone.stage_names, "stage_channels": backbone.stage_channels,
            "token_stages": {k: list(v) for k, v in TOKEN_STAGES.items()}}
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(partial, entry)


def _load_entry(entry: Path, backbone: Backbone) -> dict[str, np.ndarray]:
    """features (and boxes), plus tokens (memory-mapped) and grid for a whole-image entry, checked
    against the entry's meta.json and `backbone`: a damaged entry is an error naming it."""
    def damaged(what: str) -> ValueError:
        return ValueError(f"{entry}: {what} (a damaged or foreign cache entry); delete that folder and rerun to "
                          f"extract it again")

    try:
        meta = json.loads((entry / "meta.json").read_text())
        n_images = int(meta["n_images"])
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise damaged(f"its meta.json cannot be read ({type(err).__name__}: {err})") from err
    if (meta.get("backbone"), meta.get("weights_sha256")) != (backbone.name, backbone.weights_sha256):
        raise damaged(f"it holds features of {meta.get('backbone')} (weights {str(meta.get('weights_sha256'))[:12]}), "
                      f"not of {backbone.name} (weights {backbone.weights_sha256[:12]})")
    feats, boxes = [], []
    for chunk in sorted(entry.glob("chunk_*.npz")):
        with np.load(chunk) as data:
            feats.append(data["features"])
            if "boxes" in data:
                boxes.append(data["boxes"])
    out = {"features": np.concatenate(feats) if feats else np.zeros(0),
           "boxes": np.concatenate(boxes) if boxes else None}
    if len(out["features"]) != n_images:
        raise damaged(f"it holds {len(out['features'])} images' features, its meta.json says {n_images}")
    if (entry / "tokens.npy").is_file():
        try:
            out["tokens"] = np.load(entry / "tokens.npy", mmap_mode="r")
            out["grid"] = np.load(entry / "grid.npy")
        except (OSError, ValueError) as err:  # a truncated file
            raise damaged(f"its token maps cannot be read ({type(err).__name__}: {err})") from err
        cells = int(out["grid"].prod(1).sum()) if out["grid"].ndim == 2 else -1
        if len(out["grid"]) != n_images or len(out["tokens"]) != cells:
            raise damaged(f"its token maps hold {len(out['tokens'])} cells and its grid.npy {len(out['grid'])} grids "
                          f"of {cells} cells, for {n_images} images")
    return out


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread inside, as before outside. Its convolutions and matmuls give other bits on
    other thread counts (about 1% of fp16 values differ between 1 and 2 threads), so whatever is cached or
    compared runs on one: the same numbers in a worker, a notebook kernel or a script."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _exclusive(entry: Path):
    """An exclusive lock (flock on <entry>.lock) held while one process extracts the entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def content_hashes(table: pd.DataFrame) -> list[str]:
    """The sha256 column when the table has one (checked against the files by load_dataset(verify=True)),
    else hash each file."""
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

    Always extracts the whole-image view (pooled features and token maps, one forward pass per
    image); adds K crops per image when spec.n_crops > 0.
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
            with _exclusive(entry):  # another process extracting the same entry: wait, then reuse it
                if not entry.is_dir():
                    _extract_entry(paths, names, backbone, spec, crops, entry, progress)
        loaded = _load_entry(entry, backbone)
        if crops:
            out.crops, out.crop_boxes = loaded["features"], loaded["boxes"]
        else:
            out.full, out.tokens, out.token_grid = loaded["features"], loaded.get("tokens"), loaded.get("grid")
        out.meta["crops_entry" if crops else "full_entry"] = str(entry)
    out.meta.update(backbone=backbone.name, weights_sha256=backbone.weights_sha256,
                    spec=asdict(spec), feature_version=FEATURE_VERSION)
    return out
