"""Each converter on a small fixture release built here in that dataset's official layout."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from qfm_lib.data import DatasetError, convert_release, load_dataset

from .conftest import write_image


def _cell(strings):
    arr = np.empty((1, len(strings)), dtype=object)
    arr[0, :] = strings
    return arr


def build_live(rel):
    counts = {"jp2k": 2, "jpeg": 2, "wn": 1, "gblur": 1, "fastfading": 1}
    for folder, n in counts.items():
        for i in range(1, n + 1):
            write_image(rel / folder / f"img{i}.bmp", seed=i)
    dmos = np.array([[30.0, 0.0, 55.5, 20.0, 40.0, 60.0, 70.0]])
    savemat(rel / "dmos.mat", {"dmos": dmos, "orgs": np.array([[0, 1, 0, 0, 0, 0, 0]])})
    savemat(rel / "refnames_all.mat", {"refnames_all": _cell(["bikes.bmp", "bikes.bmp", "parrots.bmp",
                                                              "bikes.bmp", "caps.bmp", "caps.bmp", "rapids.bmp"])})
    return {"n": 6, "image": "jpeg/img2.bmp", "mos": 100 - 20.0, "ref": "bikes", "dist_type": "jpeg"}


def build_csiq(rel):
    rows = [("1600", "noise", 1, 0.061, 0.012), ("1600", "jpeg 2000", 3, 0.4, 0.05), ("aerial_city", "blur", 2, 0.3, 0.04)]
    tags = {"noise": ("awgn", "AWGN"), "jpeg 2000": ("jpeg2000", "jpeg2000"), "blur": ("blur", "BLUR")}
    for ref, kind, lev, _, _ in rows:
        folder, tag = tags[kind]
        write_image(rel / "dst_imgs" / folder / f"{ref}.{tag}.{lev}.png")
    frame = pd.DataFrame(rows, columns=["image", "dst_type", "dst_lev", "dmos", "dmos_std"])
    frame.insert(1, "dst_idx", [1, 2, 3])
    with pd.ExcelWriter(rel / "csiq.DMOS.xlsx") as xl:
        frame.to_excel(xl, sheet_name="all_by_image", index=False)
    return {"n": 3, "image": "jpeg2000/1600.jpeg2000.3.png", "mos": 1 - 0.4, "ref": "1600", "dist_type": "jpeg2000"}


def build_tid2013(rel):
    names = ["I01_01_1.bmp", "I01_02_5.bmp", "I25_24_3.BMP"]
    for i, n in enumerate(names):
        write_image(rel / "distorted_images" / (n.lower() if n.startswith("I01") else n), seed=i)
    (rel / "mos_with_names.txt").write_text("5.51429 I01_01_1.bmp\n2.25 I01_02_5.bmp\n4.0 I25_24_3.BMP\n")
    (rel / "mos_std.txt").write_text("0.13\n0.2\n0.3\n")
    return {"n": 3, "image": "i01_02_5.bmp", "mos": 2.25, "ref": "I01", "dist_type": "02"}


def build_kadid10k(rel):
    rows = [("I01_01_01.png", "I01.png", 4.57, 0.496), ("I02_13_05.png", "I02.png", 1.5, 0.25)]
    for i, (img, *_rest) in enumerate(rows):
        write_image(rel / "images" / img, seed=i)
    pd.DataFrame(rows, columns=["dist_img", "ref_img", "dmos", "var"]).to_csv(rel / "dmos.csv", index=False)
    return {"n": 2, "image": "I02_13_05.png", "mos": 1.5, "ref": "I02", "dist_type": "13"}


def build_livec(rel):
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["10.bmp", "1000.JPG", "1001.JPG"]
    for i, n in enumerate(names[7:]):
        write_image(rel / "Images" / n, seed=i)
    (rel / "Data").mkdir()
    savemat(rel / "Data" / "AllImages_release.mat", {"AllImages_release": _cell(names).T})
    savemat(rel / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.arange(10.0)[None] * 9})
    savemat(rel / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": np.full((1, 10), 15.0)})
    (rel / "README.txt").write_text("Copyright (c) 2015 The University of Texas at Austin")
    return {"n": 3, "image": "1000.JPG", "mos": 72.0}


def build_koniq10k(rel):
    rows = [("826373.jpg", 3.79, 0.51), ("10004473376.jpg", 1.21, 0.4)]
    for i, (img, *_r) in enumerate(rows):
        write_image(rel / "1024x768" / img, seed=i)
    pd.DataFrame(rows, columns=["image_name", "MOS", "SD"]).assign(c1=1, c_total=100, MOS_zscore=0.1).to_csv(
        rel / "koniq10k_scores_and_distributions.csv", index=False)
    return {"n": 2, "image": "10004473376.jpg", "mos": 1.21}


def build_spaq(rel):
    (rel / "Annotations").mkdir(parents=True)
    for i in (1, 2):
        write_image(rel / "TestImage" / f"0000{i}.jpg", seed=i)
    pd.DataFrame({"Image name": ["00001.jpg", "00002.jpg"], "MOS": [42.0, 81.5], "Brightness": [50, 60]}).to_excel(
        rel / "Annotations" / "MOS and Image attribute scores.xlsx", index=False)
    return {"n": 2, "image": "00002.jpg", "mos": 81.5}


def build_livefb(rel):
    rows = [("AVA__149.jpg", 66.8), ("blur_dataset/motion0043.jpg", 60.1)]
    for i, (img, _) in enumerate(rows):
        write_image(rel / "database" / img, seed=i)
    pd.DataFrame(rows, columns=["name_image", "mos_image"]).assign(is_valid=True).to_csv(
        rel / "labels_image.csv", index=False)
    return {"n": 2, "image": "blur_dataset/motion0043.jpg", "mos": 60.1}


BUILDERS = {name[6:]: fn for name, fn in globals().items() if name.startswith("build_")}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_converter_on_fixture_release(tmp_path, name):
    release = tmp_path / "release"
    release.mkdir()
    expected = BUILDERS[name](release)
    table = convert_release(name, release, tmp_path / "root" / name)
    assert len(table) == expected["n"]
    loaded = load_dataset(name, root=tmp_path / "root")  # verifies every sha256
    row = loaded.set_index("image").loc[expected["image"]]
    assert row["mos"] == pytest.approx(expected["mos"])
    for key in ("ref", "dist_type"):
        if key in expected:
            assert str(row[key]) == expected[key]
    meta = json.loads((tmp_path / "root" / name / "meta.json").read_text())
    assert meta["dataset"] == name and len(meta["original_range"]) == 2


def test_dmos_releases_are_flipped_and_recorded(tmp_path):
    (tmp_path / "rel").mkdir()
    build_live(tmp_path / "rel")
    table = convert_release("live", tmp_path / "rel", tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["release_is_dmos"] and meta["original_range"] == [0.0, 100.0]
    # higher DMOS (worse) must become lower MOS
    assert table.set_index("image").loc["gblur/img1.bmp", "mos"] < table.set_index("image").loc["jp2k/img1.bmp", "mos"]


def test_livec_converter_keeps_copyright_notice(tmp_path):
    (tmp_path / "rel").mkdir()
    build_livec(tmp_path / "rel")
    convert_release("livec", tmp_path / "rel", tmp_path / "out")
    assert "University of Texas" in (tmp_path / "out" / "README.txt").read_text()


def test_broken_releases_are_named(tmp_path):
    (tmp_path / "rel").mkdir()
    build_kadid10k(tmp_path / "rel")
    (tmp_path / "rel" / "images" / "I01_01_01.png").unlink()
    with pytest.raises(DatasetError, match="1 labelled images missing.*I01_01_01.png"):
        convert_release("kadid10k", tmp_path / "rel", tmp_path / "out")
    with pytest.raises(DatasetError, match="mos_with_names.txt not found"):
        convert_release("tid2013", tmp_path / "rel", tmp_path / "out2")
    with pytest.raises(DatasetError, match="unknown dataset"):
        convert_release("imagenet", tmp_path / "rel", tmp_path / "out3")


@pytest.mark.parametrize("lines, std, says", [
    ("5.5 I01_01_1.bmp\nabc I01_02_5.bmp\n", None, "mos_with_names.txt line 2: could not convert string to float: 'abc'"),
    ("5.5 I01_01_1.bmp\n\nI01_02_5.bmp\n", None, r"mos_with_names.txt line 3: expected '<mos> <image name>', got 'I01_02_5.bmp'"),
    ("5.5 I01_01.bmp\n", None, r"line 1: I01_01.bmp is not named I<ref>_<distortion>_<level>"),
    ("5.5 I01_01_1.bmp\n2.2 I01_02_5.bmp\n", "0.1\n", "mos_std.txt holds 1 values for the 2 images"),
])
def test_a_malformed_tid2013_release_is_named_by_file_and_line(tmp_path, lines, std, says):
    build_tid2013(tmp_path / "rel")
    (tmp_path / "rel" / "mos_with_names.txt").write_text(lines)
    if std is None:
        (tmp_path / "rel" / "mos_std.txt").unlink()
    else:
        (tmp_path / "rel" / "mos_std.txt").write_text(std)
    with pytest.raises(DatasetError, match=says):
        convert_release("tid2013", tmp_path / "rel", tmp_path / "out")


@pytest.mark.parametrize("name, label_file, column", [
    ("koniq10k", "koniq10k_scores_and_distributions.csv", "MOS"),
    ("livefb", "labels_image.csv", "mos_image"),
])
def test_a_label_file_without_its_columns_is_named(tmp_path, name, label_file, column):
    BUILDERS[name](tmp_path / "rel")
    csv = tmp_path / "rel" / label_file
    pd.read_csv(csv).rename(columns={column: "mos"}).to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=f"{label_file}: no column '{column}'; its columns are"):
        convert_release(name, tmp_path / "rel", tmp_path / "out")


def test_a_csiq_score_that_is_not_a_number_is_named_by_row(tmp_path):
    build_csiq(tmp_path / "rel")
    book = tmp_path / "rel" / "csiq.DMOS.xlsx"
    frame = pd.read_excel(book, sheet_name="all_by_image")
    frame["dmos"] = frame["dmos"].astype(object)
    frame.loc[1, "dmos"] = "about 0.4"
    with pd.ExcelWriter(book) as xl:
        frame.to_excel(xl, sheet_name="all_by_image", index=False)
    with pytest.raises(DatasetError, match=r"csiq.DMOS.xlsx \(sheet all_by_image\) row 3: dmos 'about 0.4' or dmos_std 0.05 is not a number"):
        convert_release("csiq", tmp_path / "rel", tmp_path / "out")


def _no_score_in_livec_entry_9(rel):
    savemat(rel / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.r_[np.arange(8.0), np.nan, 9.0][None]})


def _no_score_in_live_entry_1(rel):
    savemat(rel / "dmos.mat", {"dmos": np.array([[np.nan, 0.0, 55.5, 20.0, 40.0, 60.0, 70.0]]),
                               "orgs": np.array([[0, 1, 0, 0, 0, 0, 0]])})


def _no_score_on_tid2013_line_2(rel):
    (rel / "mos_with_names.txt").write_text("5.51429 I01_01_1.bmp\nnan I01_02_5.bmp\n4.0 I25_24_3.BMP\n")


def _no_score_in_csiq_sheet_row_3(rel):
    book = rel / "csiq.DMOS.xlsx"
    frame = pd.read_excel(book, sheet_name="all_by_image")
    frame.loc[1, "dmos"] = np.nan
    with pd.ExcelWriter(book) as xl:
        frame.to_excel(xl, sheet_name="all_by_image", index=False)


def _no_score_in_kadid10k_data_row_2(rel):
    csv = rel / "dmos.csv"
    pd.read_csv(csv).assign(dmos=[4.57, np.nan]).to_csv(csv, index=False)


@pytest.mark.parametrize("name, damage, says", [
    ("livec", _no_score_in_livec_entry_9, r"Data/AllMOS_release.mat: row 9 \(1000.JPG\)"),
    ("live", _no_score_in_live_entry_1, r"dmos.mat: row 1 \(jp2k/img1.bmp\)"),
    ("tid2013", _no_score_on_tid2013_line_2, r"mos_with_names.txt: row 2 \(i01_02_5.bmp\)"),
    ("kadid10k", _no_score_in_kadid10k_data_row_2, r"dmos.csv: row 3 \(I02_13_05.png\)"),
    ("csiq", _no_score_in_csiq_sheet_row_3, r"csiq.DMOS.xlsx \(sheet all_by_image\): row 3 \(jpeg2000/1600.jpeg2000.3.png\)"),
])
def test_a_missing_score_is_named_by_the_release_files_own_row(tmp_path, name, damage, says):
    """Rows are counted as the release file counts them: .mat entries and header-less text lines from 1,
    a CSV's lines with its header as line 1 (LIVE drops reference images, LIVEC its 7 training images)."""
    BUILDERS[name](tmp_path / "rel")
    damage(tmp_path / "rel")
    with pytest.raises(DatasetError, match=f"{says}: missing, non-numeric or infinite MOS nan"):
        convert_release(name, tmp_path / "rel", tmp_path / "out")
