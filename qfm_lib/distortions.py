"""The distortion lab: synthetic distortions of high-quality photos, stored as a canonical dataset.

Notebook 01 asks how far apart in feature space images of *different content* lie. The lab asks
the other question: take one photo (a reference) and degrade it step by step; how far do its
features move, and does a trained quality scorer's score fall with every step? Because the
distortion level is known, the check needs no human labels: within one reference, a scorer that
sees the distortion ranks the levels in order.

Distortions (level 1 = mildest; every level maps to one parameter value, `DISTORTIONS[name].values`):

    jpeg          Pillow JPEG, quality 80, 50, 30, 15, 5 (4:2:0 chroma subsampling, Pillow's default)
    blur          OpenCV Gaussian blur, sigma 0.5, 1, 2, 3, 5 px (reflected borders)
    noise         additive Gaussian white noise, sigma 4, 8, 15, 25, 40 (8-bit units), per pixel
                  and channel, seeded per reference, rounded and clipped to 0..255
    contrast      Pillow ImageEnhance.Contrast: blend towards the image's mean grey by keeping
                  a factor 0.8, 0.6, 0.45, 0.3, 0.15 of the contrast
    exposure      over-exposure: +0.5, +1, +1.5, +2, +2.5 stops (EV), i.e. linear-light gain
                  2**EV applied after undoing the sRGB curve, clipped at white, sRGB re-applied
    underexposure the same with -0.5 .. -2.5 stops (darker, shadows crushed by 8-bit rounding)

The values are our choice (no paper fixes them): spaced so that level 1 is hard to see at 100 %
and level 5 is obvious. The key holds this module's code (cache.code_digest), so editing an
algorithm or a value builds the lab afresh; DIST_VERSION is for changes the code does not show.

Dataset layout (the canonical one of qfm_lib.data):

    <cache>/datasets/<key>/<source>_lab/labels.csv, meta.json, README.md (the source's notice)
    <cache>/datasets/<key>/<source>_lab/images/<ref stem>/reference.<ext>   the reference file,
                                                                           byte for byte
    <cache>/datasets/<key>/<source>_lab/images/<ref stem>/<dist>_<level>.png (.jpg for jpeg)

labels.csv columns: image, mos, mos_std, ref, dist_type, dist_level, sha256, plus dist_param
(the level's parameter value), param_name and mos_is_human. References have dist_type
"reference", dist_level 0. **MOS of a distorted image is not a human label**: the loader rejects
missing MOS, so every row carries its reference's human MOS, `mos_is_human` is False and
`mos_std` is empty for distorted rows, and meta.json says so. Use dist_level, never mos, as the
quality order of distorted images.

The key hashes the references' names and content hashes, the distortion names, their parameter
values, the levels, the seed, the source name, DIST_VERSION, the code of this module and the
qfm_lib modules it imports, and the Pillow / OpenCV / NumPy versions. The dataset is built in <key>.partial/ and renamed to <key> only when complete; any
error (or interruption) removes the partial folder, and a stale one is wiped on the next build.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .backbones import file_sha256
from .features import content_hashes
from .images import ImageError

DIST_VERSION = 1
LEVELS = (1, 2, 3, 4, 5)
DEFAULT_DISTORTIONS = ("jpeg", "blur", "noise", "contrast", "exposure")
REFERENCE = "reference"
NOTICE_FILES = ("README.md", "README.txt", "readme.txt", "Readme.txt", "COPYRIGHT", "LICENSE")
PNG_COMPRESS_LEVEL = 3   # lossless either way; 3 is much faster than Pillow's default 6 on noise


class DistortionError(ValueError):
    """A bad distortion request or a distorted image that cannot be made; the message names it."""


class Distortion(NamedTuple):
    """apply(rgb uint8 HxWx3, level, seed=0) -> uint8 HxWx3; values[level - 1] is the parameter."""

    apply: Callable[..., np.ndarray]
    values: tuple[float, ...]


# ----------------------------------------------------------------------------- the distortions

def _param(name: str, level: int) -> float:
    check_level(name, level)
    return DISTORTIONS[name].values[level - 1]


def _jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def jpeg(rgb: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """JPEG compression at the level's quality, decoded back (what the stored .jpg decodes to)."""
    return _decode(_jpeg_bytes(rgb, _param("jpeg", level)))


def blur(rgb: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """Gaussian blur with the level's sigma (pixels), OpenCV, reflected borders."""
    import cv2

    sigma = _param("blur", level)
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def noise(rgb: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """Additive Gaussian white noise with the level's sigma (8-bit units), seeded."""
    sigma = _param("noise", level)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, level])
    out = rgb.astype(np.float32) + rng.normal(0.0, sigma, rgb.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def contrast(rgb: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """Contrast reduction: Pillow's ImageEnhance.Contrast with the level's factor (< 1)."""
    from PIL import Image, ImageEnhance

    factor = _param("contrast", level)
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(rgb)).enhance(factor))


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 0.0031308), 1 / 2.4) - 0.055)


def _exposure(rgb: np.ndarray, stops: float) -> np.ndarray:
    lin = _srgb_to_linear(rgb.astype(np.float64) / 255.0) * 2.0 ** stops
    return np.clip(np.rint(_linear_to_srgb(np.clip(lin, 0.0, 1.0)) * 255.0), 0, 255).astype(np.uint8)


def exposure(rgb: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """Over-exposure by the level's stops (linear-light gain 2**EV, clipped at white)."""
    return _exposure(rgb, _param("exposure", level))


def underexposure(rgb: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """Under-exposure by the level's (negative) stops."""
    return _exposure(rgb, _param("underexposure", level))


DISTORTIONS: dict[str, Distortion] = {
    "jpeg": Distortion(jpeg, (80, 50, 30, 15, 5)),
    "blur": Distortion(blur, (0.5, 1.0, 2.0, 3.0, 5.0)),
    "noise": Distortion(noise, (4.0, 8.0, 15.0, 25.0, 40.0)),
    "contrast": Distortion(contrast, (0.8, 0.6, 0.45, 0.3, 0.15)),
    "exposure": Distortion(exposure, (0.5, 1.0, 1.5, 2.0, 2.5)),
    "underexposure": Distortion(underexposure, (-0.5, -1.0, -1.5, -2.0, -2.5)),
}
PARAM_NAMES = {"jpeg": "quality", "blur": "sigma_px", "noise": "sigma_8bit", "contrast": "contrast_kept",
               "exposure": "ev_stops", "underexposure": "ev_stops"}
FILE_SUFFIX = {"jpeg": ".jpg"}  # every other distortion is stored as lossless PNG


# ----------------------------------------------------------------------------- checks

def check_distortion(name: str) -> Distortion:
    if not isinstance(name, str) or name not in DISTORTIONS:
        raise DistortionError(f"unknown distortion {name!r}; known distortions: {', '.join(DISTORTIONS)}")
    return DISTORTIONS[name]


def check_level(name: str, level) -> int:
    values = check_distortion(name).values
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 1 <= level <= len(values):
        raise DistortionError(f"distortion {name!r}: level {level!r} is outside its range "
                              f"1..{len(values)} (level 1 = mildest)")
    return int(level)


def check_request(distortions: Sequence[str], levels: Sequence[int]) -> tuple[list[str], list[int]]:
    """Validate names and levels (every level must exist for every distortion); sorted, unique."""
    if isinstance(distortions, str) or not len(distortions):
        raise DistortionError(f"distortions must be a non-empty list of names, got {distortions!r}")
    if isinstance(levels, (str, int)) or not len(levels):
        raise DistortionError(f"levels must be a non-empty list of integers, got {levels!r}")
    names = list(dict.fromkeys(distortions))
    for name in names:
        for level in levels:
            check_level(name, level)
    return names, sorted({int(level) for level in levels})


def _check_rgb(rgb) -> np.ndarray:
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DistortionError(f"distortions take uint8 HxWx3 RGB arrays, got {rgb.dtype} {rgb.shape}")
    return rgb


def distort(rgb: np.ndarray, name: str, level: int, seed: int = 0) -> np.ndarray:
    """One distortion of an 8-bit RGB array; checks the request and the result's dtype and shape."""
    check_level(name, level)
    rgb = _check_rgb(rgb)
    out = DISTORTIONS[name].apply(rgb, level, seed=seed)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != rgb.shape:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise DistortionError(f"distortion {name!r} level {level} returned {got}, expected uint8 {rgb.shape}")
    return out


def encode_distorted(rgb: np.ndarray, name: str, level: int, seed: int = 0) -> tuple[bytes, str]:
    """The file bytes of one distorted image and their suffix: JPEG at the level's quality for
    'jpeg' (the file decodes to exactly `distort(...)`), lossless PNG for the others."""
    from PIL import Image

    if name == "jpeg":
        return _jpeg_bytes(_check_rgb(rgb), _param(name, level)), ".jpg"
    out = distort(rgb, name, level, seed)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue(), FILE_SUFFIX.get(name, ".png")


# ----------------------------------------------------------------------------- the dataset

def select_references(table: pd.DataFrame, n_refs: int) -> pd.DataFrame:
    """The n_refs highest-MOS rows of `table` (ties broken by image name), highest first."""
    if isinstance(n_refs, bool) or not isinstance(n_refs, (int, np.integer)) or n_refs < 1:
        raise DistortionError(f"n_refs must be a positive integer, got {n_refs!r}")
    for col in ("image", "mos", "path"):
        if col not in table:
            raise DistortionError(f"the candidate table needs column {col!r} (has {list(table.columns)})")
    if n_refs > len(table):
        raise DistortionError(f"n_refs={n_refs} but only {len(table)} candidate images were given")
    order = table.assign(_mos=pd.to_numeric(table["mos"], errors="coerce")).sort_values(
        ["_mos", "image"], ascending=[False, True], kind="mergesort", na_position="last")
    return order.head(n_refs).drop(columns="_mos").reset_index(drop=True)


def lab_name(source: str) -> str:
    return f"{source}_lab"


def register_lab_dataset(name: str, source: str = "custom") -> None:
    """Make `name` known to qfm_lib.data (load_dataset accepts registered names only)."""
    from .data import DATASETS, DatasetInfo

    if name not in DATASETS:
        base = DATASETS.get(source)
        DATASETS[name] = DatasetInfo(
            name, "synthetic", base.score_range if base else (0.0, 100.0), False,
            f"synthetic distortions (qfm_lib.distortions v{DIST_VERSION}) of {source} references"
            + (f"; source: {base.citation}" if base else ""))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ref_hashes(refs: pd.DataFrame) -> list[str]:
    try:
        return [str(h) for h in content_hashes(refs)]
    except ImageError as err:
        raise DistortionError(f"reference image: {err}") from err


def _ref_folders(images: Sequence[str]) -> list[str]:
    """A distinct, file-system-safe folder name per reference (its stem where that is unique)."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9._-]", "_", s)  # noqa: E731
    stems = [clean(str(Path(img).with_suffix("")).replace("/", "__")) for img in images]
    if len(set(stems)) == len(stems):
        return stems
    return [clean(str(img).replace("/", "__")) for img in images]


def _notice_source(table: pd.DataFrame) -> Path | None:
    """The source dataset folder (for its copyright notice): table.attrs['folder'] or the folder
    above images/ that holds labels.csv."""
    folder = table.attrs.get("folder")
    if folder and Path(folder).is_dir():
        return Path(folder)
    for parent in Path(str(table["path"].iloc[0])).parents:
        if (parent / "labels.csv").is_file():
            return parent
    return None


def dataset_key(refs: pd.DataFrame, distortions: Sequence[str], levels: Sequence[int], seed: int,
                source: str) -> str:
    from .cache import code_digest, digest, library_versions

    params = {"version": DIST_VERSION, "code": code_digest("distortions"), "source": source, "seed": int(seed), "levels": list(levels),
              "distortions": {d: list(DISTORTIONS[d].values) for d in distortions},
              "order": list(distortions), "png_level": PNG_COMPRESS_LEVEL,
              "libraries": library_versions("PIL", "cv2", "numpy")}
    ids = "".join(f"{n}\0{h}\n" for n, h in zip(refs["image"], _ref_hashes(refs))).encode()
    return digest(params, ids)


def make_distorted_dataset(table: pd.DataFrame, n_refs: int,
                           distortions: Sequence[str] = DEFAULT_DISTORTIONS,
                           levels: Sequence[int] = LEVELS, seed: int = 0, *,
                           source: str | None = None, progress: bool = False,
                           cache_root: str | Path | None = None) -> tuple[Path, str]:
    """Build (or reuse) the lab dataset: the n_refs highest-MOS images of `table` (the candidates,
    a canonical table with image, mos, path[, mos_std, sha256]) and each of their distortions at
    each level. Returns (root, name) such that qfm_lib.data.load_dataset(name, root=root) loads it.

    source: the source dataset's name (default table.attrs['dataset'] or 'custom'); the dataset
    is called '<source>_lab'. cache_root: default qfm_lib.paths.cache_dir().
    """
    from PIL import Image

    from .images import load_rgb
    from .paths import cache_dir

    names, levels = check_request(distortions, levels)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DistortionError(f"seed must be an integer, got {seed!r}")
    refs = select_references(table, n_refs)
    source = source or table.attrs.get("dataset") or "custom"
    name = lab_name(source)
    register_lab_dataset(name, source)
    base = Path(cache_root) if cache_root is not None else cache_dir()
    entry = base / "datasets" / dataset_key(refs, names, levels, seed, source)
    if (entry / name / "labels.csv").is_file():
        return entry, name
    partial = entry.with_name(entry.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run: start again
    out = partial / name
    (out / "images").mkdir(parents=True)
    folders = _ref_folders(list(refs["image"]))
    todo = len(refs) * (1 + len(names) * len(levels))
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo, unit="img", desc="distortion lab", disable=not progress)
        rows = []
        for (_, ref), folder in zip(refs.iterrows(), folders):
            src = Path(ref["path"])
            rgb = np.asarray(load_rgb(src))  # ImageError names the file
            ref_std = float(ref["mos_std"]) if "mos_std" in ref and pd.notna(ref["mos_std"]) else np.nan
            ref_file = f"{folder}/{REFERENCE}{src.suffix.lower()}"
            (out / "images" / folder).mkdir()
            shutil.copyfile(src, out / "images" / ref_file)
            rows.append({"image": ref_file, "mos": float(ref["mos"]), "mos_std": ref_std,
                         "ref": ref["image"], "dist_type": REFERENCE, "dist_level": 0,
                         "sha256": file_sha256(out / "images" / ref_file), "dist_param": np.nan,
                         "param_name": "", "mos_is_human": True})
            bar.update(1)
            ref_seed = zlib.crc32(f"{seed}:{ref['image']}".encode())
            for dist in names:
                for level in levels:
                    label = f"{ref['image']} / {dist} level {level}"
                    try:
                        data, suffix = encode_distorted(rgb, dist, level, ref_seed)
                        with Image.open(io.BytesIO(data)) as check:  # the file must decode
                            check.load()
                    except Exception as err:
                        raise DistortionError(f"distorted image {label} could not be made or encoded "
                                              f"({type(err).__name__}: {err})") from err
                    image = f"{folder}/{dist}_{level}{suffix}"
                    (out / "images" / image).write_bytes(data)
                    rows.append({"image": image, "mos": float(ref["mos"]), "mos_std": np.nan,
                                 "ref": ref["image"], "dist_type": dist, "dist_level": level,
                                 "sha256": _sha256(data), "dist_param": DISTORTIONS[dist].values[level - 1],
                                 "param_name": PARAM_NAMES[dist], "mos_is_human": False})
                    bar.update(1)
        bar.close()
        labels = pd.DataFrame(rows)
        labels.to_csv(out / "labels.csv", index=False)
        notice_dir = _notice_source(table)
        notices = []
        for notice in NOTICE_FILES if notice_dir else ():
            if (notice_dir / notice).is_file():  # keep the source's copyright notice with the copy
                shutil.copy2(notice_dir / notice, out / notice)
                notices.append(notice)
        meta = {"dataset": name, "source": source, "kind": "synthetic", "dist_version": DIST_VERSION,
                "seed": int(seed), "n_refs": len(refs), "levels": levels,
                "distortions": {d: {"param": PARAM_NAMES[d], "values": list(DISTORTIONS[d].values)} for d in names},
                "references": list(refs["image"]), "n_images": len(labels),
                "mos_note": "MOS of distorted images is NOT a human label: every row carries its "
                            "reference's human MOS (mos_is_human False, mos_std empty) only because "
                            "the loader requires a MOS. Use dist_level as their quality order.",
                "source_notice": notices or "none found beside the source labels.csv"}
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(partial, entry)
        except OSError:
            if not (entry / name / "labels.csv").is_file():  # not a concurrent build that won
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return entry, name


# ----------------------------------------------------------------------------- measurements

def within_reference_srcc(table: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """Does a score fall with the distortion level? For each reference and distortion type, the
    Spearman correlation between the score and MINUS the level, over the reference (level 0) and its
    distorted versions: +1 = the score falls at every step, 0 = no order, -1 = it rises.
    One row per (ref, dist_type): srcc (NaN when the scores are constant), n (images used)."""
    from scipy import stats

    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(table),):
        raise ValueError(f"{scores.size} scores for a table of {len(table)} rows")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    t = table[["ref", "dist_type", "dist_level"]].reset_index(drop=True).assign(score=scores)
    refs = t[t["dist_type"] == REFERENCE].set_index("ref")["score"]
    rows = []
    for (ref, dist), group in t[t["dist_type"] != REFERENCE].groupby(["ref", "dist_type"], sort=True):
        level = np.r_[0, group["dist_level"].to_numpy(float)]
        score = np.r_[refs.loc[ref], group["score"].to_numpy()]
        rho = np.nan if np.ptp(score) == 0 else stats.spearmanr(score, -level)[0]
        rows.append({"ref": ref, "dist_type": dist, "srcc": rho, "n": len(score)})
    return pd.DataFrame(rows)


def own_and_other_distances(x: np.ndarray, table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature distances (rows of x = rows of table, already scaled as wanted):
    (one row per distorted image with its Euclidean distance to its own reference,
     the distances between every pair of different references)."""
    from scipy.spatial.distance import pdist

    t = table.reset_index(drop=True)
    is_ref = (t["dist_type"] == REFERENCE).to_numpy()
    ref_row = {r: i for i, r in zip(np.flatnonzero(is_ref), t.loc[is_ref, "ref"])}
    dist_rows = np.flatnonzero(~is_ref)
    own = np.array([np.linalg.norm(x[i] - x[ref_row[t.at[i, "ref"]]]) for i in dist_rows])
    cols = [c for c in ("image", "ref", "dist_type", "dist_level") if c in t]
    own_table = t.loc[dist_rows, cols].assign(distance=own)
    return own_table.reset_index(drop=True), pdist(x[is_ref]) if is_ref.sum() > 1 else np.array([])
