"""Datasets in one canonical form, and converters from the official release layouts.

Canonical form, under the data root (``$QFM_DATA_ROOT``, default ./data):

    <root>/<name>/images/...      the image files (sub-folders allowed)
    <root>/<name>/labels.csv      image, mos[, mos_std, ref, dist_type, dist_level, sha256]
    <root>/<name>/meta.json       (written by converters) original score range, flip, source

``image`` is the path relative to images/; ``mos`` is higher-is-better. Converters flip DMOS
(lower-is-better) releases as ``mos = lo + hi - dmos`` over the release's nominal range, which keeps
the scale and records it in meta.json. Only LIVEC is available on these machines; the other
converters follow each release's documented layout and are tested on fixture releases.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from .backbones import file_sha256
from .paths import data_root

CANONICAL_COLUMNS = ["image", "mos", "mos_std", "ref", "dist_type", "dist_level", "sha256"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str                 # "authentic" or "synthetic" (synthetic splits group by reference)
    score_range: tuple[float, float]
    release_is_dmos: bool
    citation: str


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo("live", "synthetic", (0.0, 100.0), True,
                "H.R. Sheikh, M.F. Sabir, A.C. Bovik, IEEE TIP 15(11), 2006"),
    DatasetInfo("csiq", "synthetic", (0.0, 1.0), True,
                "E.C. Larson, D.M. Chandler, J. Electronic Imaging 19(1), 2010"),
    DatasetInfo("tid2013", "synthetic", (0.0, 9.0), False,
                "N. Ponomarenko et al., Signal Processing: Image Communication 30, 2015"),
    DatasetInfo("kadid10k", "synthetic", (1.0, 5.0), False,
                "H. Lin, V. Hosu, D. Saupe, QoMEX 2019"),
    DatasetInfo("livec", "authentic", (0.0, 100.0), False,
                "D. Ghadiyaram, A.C. Bovik, IEEE TIP 25(1):372-387, 2016"),
    DatasetInfo("koniq10k", "authentic", (1.0, 5.0), False,
                "V. Hosu, H. Lin, T. Sziranyi, D. Saupe, IEEE TIP 29, 2020"),
    DatasetInfo("spaq", "authentic", (0.0, 100.0), False,
                "Y. Fang, H. Zhu, Y. Zeng, K. Ma, Z. Wang, CVPR 2020"),
    DatasetInfo("livefb", "authentic", (0.0, 100.0), False,
                "Z. Ying et al., CVPR 2020 (PaQ-2-PiQ / FLIVE)"),
]}


class DatasetError(ValueError):
    """A dataset that cannot be loaded as asked; the message names the file or row."""


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_dir(name: str, root: str | Path | None = None) -> Path:
    dataset_info(name)
    root = Path(root) if root is not None else data_root()
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist: set QFM_DATA_ROOT to the folder that "
                           f"holds <dataset>/labels.csv (e.g. export QFM_DATA_ROOT=../shared/data)")
    folder = root / name
    if not (folder / "labels.csv").is_file():
        raise DatasetError(f"dataset {name!r} not found: {folder / 'labels.csv'} is missing. Put the "
                           f"canonical copy there, or convert the official release with "
                           f"qfm_lib.data.convert_release({name!r}, RELEASE_DIR, {folder}).")
    return folder


def validate_labels(table: pd.DataFrame, source: str, first_row: int = 2) -> pd.DataFrame:
    """Check a canonical label table; errors name the file and the row. The table's index holds each
    row's 0-based position among the file's entries (a RangeIndex unless blank lines were dropped, as
    read_labels does), and `first_row` is the number the file gives its first entry: 2 in a CSV with a
    header line, 1 in a text file without one or in a .mat vector."""
    _columns(table, source, "image", "mos")
    if table.empty:
        raise DatasetError(f"{source}: no rows")
    line = (table.index.to_numpy() if pd.api.types.is_integer_dtype(table.index) else np.arange(len(table))) + first_row
    empty = table["image"].isna() | (table["image"].astype(str).str.strip() == "")
    if empty.any():
        raise DatasetError(f"{source}: row {line[np.flatnonzero(empty)[0]]}: empty image name")
    outside = [i for i, name in enumerate(table["image"].astype(str))
               if Path(name).is_absolute() or ".." in Path(name).parts]
    if outside:
        raise DatasetError(f"{source}: row {line[outside[0]]}: image name {table['image'].iloc[outside[0]]!r} "
                           f"is not a path inside the images/ folder")
    mos = pd.to_numeric(table["mos"], errors="coerce")
    bad = ~np.isfinite(mos.to_numpy(dtype=float))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = table["mos"].iloc[row]
        shown = repr(value) if isinstance(value, str) else value
        raise DatasetError(f"{source}: row {line[row]} ({table['image'].iloc[row]}): missing, "
                           f"non-numeric or infinite MOS {shown}")
    dup = table["image"].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DatasetError(f"{source}: row {line[row]}: duplicate image name {table['image'].iloc[row]!r}")
    out = table.reset_index(drop=True)
    out["mos"] = mos.to_numpy(dtype=float)
    for col in CANONICAL_COLUMNS:
        if col not in out:
            out[col] = np.nan
    return out


def read_labels(path: Path) -> pd.DataFrame:
    """A labels.csv as read, blank lines dropped (the index keeps each row's position in the file, so
    that validate_labels names the right line); a file pandas cannot parse is a DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: labels file not found")
    try:
        table = pd.read_csv(path, dtype={"image": str, "ref": str, "dist_type": str}, keep_default_na=False,
                            na_values=[""], skip_blank_lines=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read it as a CSV table ({type(err).__name__}: {err})") from err
    return table[~table.isna().all(axis=1)]


def load_dataset(name: str, root: str | Path | None = None, verify: bool = True,
                 limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The canonical table of `name` with an absolute `path` column.

    verify: check every file exists and, where the table has sha256, that its hash matches.
    limit: keep a seeded random subset of that many images (smoke runs), in table order.
    """
    folder = dataset_dir(name, root)
    labels = folder / "labels.csv"
    table = validate_labels(read_labels(labels), str(labels))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        if limit < len(table):
            keep = np.sort(np.random.default_rng(seed).choice(len(table), limit, replace=False))
            table = table.iloc[keep].reset_index(drop=True)
    table["path"] = [str(folder / "images" / img) for img in table["image"]]
    if verify:
        for row, (img, path, sha) in enumerate(zip(table["image"], table["path"], table["sha256"])):
            if not os.path.isfile(path):
                raise DatasetError(f"{labels}: image {img!r} listed but {path} is missing")
            if isinstance(sha, str) and sha and file_sha256(path) != sha:
                raise DatasetError(f"{labels}: image {img!r}: sha256 mismatch, {path} is not the "
                                   f"file the labels were made for (corrupt or replaced)")
    table.attrs.update(dataset=name, folder=str(folder))
    return table


# ----------------------------------------------------------------------------- converters

def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"release layout: {what} not found at {path}")
    return path


def _loadmat_vectors(path: Path, *keys: str) -> list[np.ndarray]:
    """The variables `keys` of one .mat file, read once, each squeezed to a vector."""
    from scipy.io import loadmat

    data = loadmat(_require(path, keys[0]))
    for key in keys:
        if key not in data:
            raise DatasetError(f"{path}: no variable {key!r} (has {[k for k in data if not k.startswith('__')]})")
    return [np.squeeze(data[key]) for key in keys]


def _mat_strings(values: np.ndarray) -> list[str]:
    return [str(np.squeeze(v)) for v in np.ravel(values)]


def _flip(scores, info: DatasetInfo) -> np.ndarray:
    lo, hi = info.score_range
    return lo + hi - np.asarray(scores, dtype=float)


def _convert_live(release: Path, spec: Converter) -> pd.DataFrame:
    """LIVE Release 2: jp2k/ jpeg/ wn/ gblur/ fastfading/ imgN.bmp, dmos.mat, refnames_all.mat.

    dmos.mat holds dmos and orgs (1 = reference image) for the 982 images in folder order
    jp2k, jpeg, wn, gblur, fastfading, each folder's images numbered img1..imgN.
    """
    dmos, orgs = _loadmat_vectors(spec.label_path(release), "dmos", "orgs")
    refs = _mat_strings(_loadmat_vectors(release / "refnames_all.mat", "refnames_all")[0])
    rows = []
    for folder in ["jp2k", "jpeg", "wn", "gblur", "fastfading"]:
        n = len(list(_require(release / folder, f"folder {folder}/").glob("img*.bmp")))
        rows += [(f"{folder}/img{i}.bmp", folder) for i in range(1, n + 1)]
    if len(rows) != len(dmos) or len(refs) != len(dmos):
        raise DatasetError(f"{release}: {len(rows)} images in folders but {len(dmos)} DMOS values "
                           f"and {len(refs)} reference names")
    table = pd.DataFrame(rows, columns=["image", "dist_type"])
    table["mos"] = _flip(dmos, DATASETS["live"])
    table["ref"] = [Path(r).stem for r in refs]
    return table[orgs == 0]  # reference images carry no distortion; the index keeps dmos.mat's entry


CSIQ_FILE_TYPES = {"noise": ("awgn", "AWGN"), "jpeg": ("jpeg", "JPEG"),
                   "jpeg 2000": ("jpeg2000", "jpeg2000"), "f noise": ("fnoise", "fnoise"),
                   "blur": ("blur", "BLUR"), "contrast": ("contrast", "contrast")}


def _convert_csiq(release: Path, spec: Converter) -> pd.DataFrame:
    """CSIQ: csiq.DMOS.xlsx (sheet all_by_image: image, dst_type, dst_lev, dmos_std, dmos) and
    dst_imgs/<folder>/<image>.<TYPE>.<level>.png."""
    sheet = _columns(pd.read_excel(spec.label_path(release), sheet_name=spec.sheet), spec.source,
                     "image", "dst_type", "dst_lev", "dmos_std", "dmos")
    rows = []
    for i, r in sheet.iterrows():
        kind = str(r["dst_type"]).strip().lower()
        if kind not in CSIQ_FILE_TYPES:
            raise DatasetError(f"{spec.source} row {i + 2}: unknown dst_type {r['dst_type']!r}")
        folder, tag = CSIQ_FILE_TYPES[kind]
        ref = str(r["image"]).strip()
        try:
            level = int(r["dst_lev"])
        except (TypeError, ValueError):
            raise DatasetError(f"{spec.source} row {i + 2}: dst_lev {r['dst_lev']!r} is not a whole number") from None
        try:
            dmos, dmos_std = float(r["dmos"]), float(r["dmos_std"])
        except (TypeError, ValueError):
            raise DatasetError(f"{spec.source} row {i + 2}: dmos {r['dmos']!r} or dmos_std {r['dmos_std']!r} "
                               f"is not a number") from None
        rows.append({"image": f"{folder}/{ref}.{tag}.{level}.png", "ref": ref, "dist_type": folder,
                     "dist_level": level, "mos": dmos, "mos_std": dmos_std})
    table = pd.DataFrame(rows, index=sheet.index)
    table["mos"] = _flip(table["mos"], DATASETS["csiq"])
    return table


def _convert_tid2013(release: Path, spec: Converter) -> pd.DataFrame:
    """TID2013: mos_with_names.txt ('5.51429 I01_01_1.bmp' per line), mos_std.txt,
    distorted_images/ (file names vary in case: i01_01_1.bmp, I25_01_1.BMP)."""
    lines = spec.label_path(release).read_text().split("\n")
    entries = [(n + 1, ln.split()) for n, ln in enumerate(lines) if ln.strip()]
    std_file = release / "mos_std.txt"
    stds = _numbers(std_file.read_text().split(), "mos_std.txt") if std_file.exists() else [np.nan] * len(entries)
    if len(stds) != len(entries):
        raise DatasetError(f"mos_std.txt holds {len(stds)} values for the {len(entries)} images of {spec.label_file}")
    files = {p.name.lower(): p for p in _require(release / spec.image_folder, f"{spec.image_folder}/").iterdir()}
    rows = []
    for (line, fields), std in zip(entries, stds):
        where = f"{spec.label_file} line {line}"
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected '<mos> <image name>', got {' '.join(fields)!r}")
        mos, name = fields
        parts = Path(name).stem.upper().split("_")
        if len(parts) != 3 or not parts[2].isdigit():
            raise DatasetError(f"{where}: {name} is not named I<ref>_<distortion>_<level> (e.g. I01_01_1.bmp)")
        if name.lower() not in files:
            raise DatasetError(f"{where}: no file {name} in distorted_images/")
        rows.append({"image": files[name.lower()].name, "mos": _numbers([mos], where)[0], "mos_std": std,
                     "ref": parts[0], "dist_type": parts[1], "dist_level": int(parts[2])})
    return pd.DataFrame(rows, index=[line - 1 for line, _ in entries])


def _numbers(values: list[str], where: str) -> list[float]:
    """floats of `values`; a DatasetError naming `where` and the first value that is not a number."""
    try:
        return [float(v) for v in values]
    except ValueError as err:
        raise DatasetError(f"{where}: {err}") from None


def _columns(frame: pd.DataFrame, where: str, *names: str) -> pd.DataFrame:
    """`frame`, which must have the columns `names`; else a DatasetError naming the file and the columns."""
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DatasetError(f"{where}: no column {', '.join(map(repr, missing))}; its columns are {list(frame.columns)}")
    return frame


def _read_csv(release: Path, spec: Converter, *names: str) -> pd.DataFrame:
    """The CSV label file of `spec` in `release`, which must have the columns `names`."""
    return _columns(pd.read_csv(spec.label_path(release)), spec.source, *names)


def _convert_kadid10k(release: Path, spec: Converter) -> pd.DataFrame:
    """KADID-10k: dmos.csv (dist_img, ref_img, dmos, var) and images/. Despite its name the
    'dmos' column is higher-is-better (1-5 DCR scale), so it is not flipped."""
    csv = _read_csv(release, spec, "dist_img", "ref_img", "dmos", "var")
    parts = csv["dist_img"].str.extract(r"I\d+_(\d+)_(\d+)")
    return pd.DataFrame({"image": csv["dist_img"], "mos": csv["dmos"], "mos_std": np.sqrt(csv["var"]),
                         "ref": csv["ref_img"].str.replace(r"\.\w+$", "", regex=True),
                         "dist_type": parts[0], "dist_level": parts[1].astype(float)})


def _convert_livec(release: Path, spec: Converter) -> pd.DataFrame:
    """LIVE Challenge (ChallengeDB_release): Data/AllImages_release.mat, AllMOS_release.mat,
    AllStdDev_release.mat and Images/. The first 7 entries are the rater-training images
    (Images/trainingImages), excluded as in every published protocol."""
    data = release / "Data"
    names = _mat_strings(_loadmat_vectors(data / "AllImages_release.mat", "AllImages_release")[0])
    mos = _loadmat_vectors(spec.label_path(release), "AllMOS_release")[0]
    std = _loadmat_vectors(data / "AllStdDev_release.mat", "AllStdDev_release")[0]
    if not len(names) == len(mos) == len(std):
        raise DatasetError(f"{data}: {len(names)} names, {len(mos)} MOS, {len(std)} std values")
    return pd.DataFrame({"image": names[7:], "mos": mos[7:], "mos_std": std[7:]}, index=range(7, len(names)))


def _convert_koniq10k(release: Path, spec: Converter) -> pd.DataFrame:
    """KonIQ-10k: koniq10k_scores_and_distributions.csv (image_name, MOS, SD) and 1024x768/."""
    csv = _read_csv(release, spec, "image_name", "MOS", "SD")
    return pd.DataFrame({"image": csv["image_name"], "mos": csv["MOS"], "mos_std": csv["SD"]})


def _convert_spaq(release: Path, spec: Converter) -> pd.DataFrame:
    """SPAQ: Annotations/MOS and Image attribute scores.xlsx (Image name, MOS) and TestImage/."""
    sheet = _columns(pd.read_excel(spec.label_path(release), sheet_name=spec.sheet), spec.source, "Image name", "MOS")
    return pd.DataFrame({"image": sheet["Image name"].astype(str), "mos": sheet["MOS"]})


def _convert_livefb(release: Path, spec: Converter) -> pd.DataFrame:
    """LIVE-FB (FLIVE, PaQ-2-PiQ release): labels_image.csv (name_image, mos_image) and database/."""
    csv = _read_csv(release, spec, "name_image", "mos_image")
    return pd.DataFrame({"image": csv["name_image"], "mos": csv["mos_image"]})


class Converter(NamedTuple):
    """How one release becomes a canonical table. `convert(release, spec)` reads the scores from
    `label_file` (and `sheet`, in a workbook) and returns the table indexed by each row's 0-based
    position among that file's entries; the file numbers its first entry `first_row` (so that
    errors name the release file's own row)."""
    convert: Callable[[Path, Converter], pd.DataFrame]
    image_folder: str  # inside the release, like label_file
    label_file: str
    first_row: int
    sheet: str | int = 0  # pandas.read_excel's sheet_name

    @property
    def source(self) -> str:
        """The label file (and sheet) for error messages."""
        return self.label_file + (f" (sheet {self.sheet})" if isinstance(self.sheet, str) else "")

    def label_path(self, release: Path) -> Path:
        """The label file in `release`; a DatasetError when it is not there."""
        return _require(release / self.label_file, self.label_file)


CONVERTERS: dict[str, Converter] = {
    "live": Converter(_convert_live, ".", "dmos.mat", 1),
    "csiq": Converter(_convert_csiq, "dst_imgs", "csiq.DMOS.xlsx", 2, sheet="all_by_image"),
    "tid2013": Converter(_convert_tid2013, "distorted_images", "mos_with_names.txt", 1),
    "kadid10k": Converter(_convert_kadid10k, "images", "dmos.csv", 2),
    "livec": Converter(_convert_livec, "Images", "Data/AllMOS_release.mat", 1),
    "koniq10k": Converter(_convert_koniq10k, "1024x768", "koniq10k_scores_and_distributions.csv", 2),
    "spaq": Converter(_convert_spaq, "TestImage", "Annotations/MOS and Image attribute scores.xlsx", 2),
    "livefb": Converter(_convert_livefb, "database", "labels_image.csv", 2),
}


def convert_release(name: str, release_dir: str | Path, out_dir: str | Path,
                    hash_images: bool = True) -> pd.DataFrame:
    """Convert an official release into the canonical layout at out_dir (images hard-linked or
    copied, labels.csv, meta.json). Returns the canonical table."""
    info = dataset_info(name)
    release, out = Path(release_dir), Path(out_dir)
    if not release.is_dir():
        raise DatasetError(f"release folder {release} does not exist")
    spec = CONVERTERS[name]
    table = validate_labels(spec.convert(release, spec), f"{name} release at {release}: {spec.source}", spec.first_row)
    sources = [release / spec.image_folder / img for img in table["image"]]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise DatasetError(f"{name} release: {len(missing)} labelled images missing, e.g. {missing[0]}")
    for src, img in zip(sources, table["image"]):
        _place(src, out / "images" / img)
    if hash_images:
        table["sha256"] = [file_sha256(out / "images" / img) for img in table["image"]]
    table[[c for c in CANONICAL_COLUMNS if table[c].notna().any()]].to_csv(out / "labels.csv", index=False)
    meta = {"dataset": name, "citation": info.citation, "kind": info.kind,
            "original_range": list(info.score_range), "release_is_dmos": info.release_is_dmos,
            "flip": "mos = lo + hi - dmos" if info.release_is_dmos else None,
            "source": str(release.resolve()), "n_images": len(table)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    for notice in ("README.md", "README.txt", "readme.txt", "Readme.txt", "COPYRIGHT", "LICENSE"):
        if (release / notice).is_file():  # keep the dataset's copyright notice with any copy
            shutil.copy2(release / notice, out / notice)
    return table
