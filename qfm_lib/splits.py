"""The evaluation protocol's splits: 10 seeded 80/20 train/test splits, each with a validation
part carved from its training side, grouped by reference image when the dataset has references.

Split files live in data/splits/<dataset>.csv (committed; image names only, no labels): one row per
image, one column per split (split_0 .. split_9) holding 'train', 'val' or 'test'.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from .paths import SPLITS_DIR

N_SPLITS = 10
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2   # of the training side
BASE_SEED = 20240721


def make_splits(images: list[str], groups: list[str] | None = None, n_splits: int = N_SPLITS,
                test_fraction: float = TEST_FRACTION, val_fraction: float = VAL_FRACTION,
                seed: int = BASE_SEED) -> pd.DataFrame:
    """A table image x split_i of 'train'/'val'/'test'. Split i uses seed + i; all images of one
    group (reference) fall on the same side of every cut."""
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1:
        raise ValueError("test_fraction and val_fraction must lie strictly between 0 and 1")
    if len(set(images)) != len(images):
        raise ValueError("image names must be unique")
    images = list(images)
    groups = np.asarray(groups if groups is not None else images, dtype=object)
    table = pd.DataFrame({"image": images})
    idx = np.arange(len(images))
    for i in range(n_splits):
        cut = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed + i)
        trainval, test = next(cut.split(idx, groups=groups))
        cut_val = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed + 1000 + i)
        train_rel, val_rel = next(cut_val.split(trainval, groups=groups[trainval]))
        part = np.empty(len(images), dtype=object)
        part[trainval[train_rel]], part[trainval[val_rel]], part[test] = "train", "val", "test"
        table[f"split_{i}"] = part
    return table


def split_file(dataset: str, folder: Path | None = None) -> Path:
    return (folder or SPLITS_DIR) / f"{dataset}.csv"


def write_splits(dataset: str, table: pd.DataFrame, folder: Path | None = None) -> Path:
    path = split_file(dataset, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.sort_values("image").to_csv(path, index=False)
    return path


def load_splits(dataset: str, images: list[str] | None = None, folder: Path | None = None) -> pd.DataFrame:
    """The committed splits of `dataset`, restricted to `images` (in that order) when given."""
    path = split_file(dataset, folder)
    if not path.is_file():
        raise FileNotFoundError(f"no split file {path}: generate it with "
                                f"`python -m qfm_lib.splits {dataset}` and commit it")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    _check_table(table, path)
    if images is not None:
        table = table.set_index("image")
        missing = [img for img in images if img not in table.index]
        if missing:
            raise ValueError(f"{path}: {len(missing)} images are in no split, e.g. {missing[:3]}")
        table = table.loc[list(images)].reset_index()
    return table


def _check_table(table: pd.DataFrame, path: Path) -> None:
    """A split file must name each image once and give it train, val or test in every split column;
    the error names the file, the line and the image."""
    columns = [c for c in table.columns if c.startswith("split_")]
    if "image" not in table.columns or not columns:
        raise ValueError(f"{path}: expected columns image, split_0, split_1, ...; found {list(table.columns)}")
    duplicated = table.image.duplicated()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        raise ValueError(f"{path}: line {i + 2}: image {table.image[i]!r} appears twice "
                         f"({int(duplicated.sum())} repeated rows); each image needs one row")
    for column in columns:
        bad = ~table[column].isin(("train", "val", "test"))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: line {i + 2} ({table.image[i]}): {column} is {table[column][i]!r}, expected "
                             f"train, val or test ({int(bad.sum())} such cells in {column})")


def split_parts(table: pd.DataFrame, split: int) -> dict[str, np.ndarray]:
    """Row indices of train, val and test in split `split` of a split table."""
    col = table[f"split_{split}"].to_numpy()
    return {part: np.flatnonzero(col == part) for part in ("train", "val", "test")}


def main(argv: list[str] | None = None) -> None:
    import argparse

    from .data import dataset_info, load_dataset

    parser = argparse.ArgumentParser(description="write data/splits/<dataset>.csv")
    parser.add_argument("dataset")
    args = parser.parse_args(argv)
    table = load_dataset(args.dataset, verify=False)
    grouped = dataset_info(args.dataset).kind == "synthetic"
    splits = make_splits(list(table["image"]), list(table["ref"]) if grouped else None)
    print(f"wrote {write_splits(args.dataset, splits)}")


if __name__ == "__main__":
    main()
