"""The distortion lab: each distortion changes an image monotonically with its level, the lab
dataset has the canonical layout and loads, its cache is keyed and reused, bad requests fail clearly."""
import io
import json
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qfm_lib import distortions as D
from qfm_lib.data import CANONICAL_COLUMNS, load_dataset

from .conftest import write_image


def _photo(h=96, w=128, seed=0) -> np.ndarray:
    """A photo-like test image: smooth colour gradients, a texture and mild grain, no clipping."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    rng = np.random.default_rng(seed)
    base = np.stack([60 + 80 * xx / w, 70 + 70 * yy / h, 110 + 40 * np.sin(xx / 9) * np.cos(yy / 7)], axis=2)
    base += 25 * np.sin(xx / 2.3 + yy / 3.1)[..., None] + rng.normal(0, 4, base.shape)
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def _series(name, rgb, measure, seed=0):
    return [measure(D.distort(rgb, name, level, seed)) for level in D.LEVELS]


def _strictly(values, direction):
    diffs = np.diff(values)
    return bool(np.all(diffs < 0)) if direction == "down" else bool(np.all(diffs > 0))


def _hf_energy(img):
    gray = img.astype(float).mean(2)
    lap = gray[1:-1, 1:-1] * 4 - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float(np.mean(lap ** 2))


# ----------------------------------------------------------------------------- the distortions

def test_registry_shape_and_defaults():
    assert set(D.DEFAULT_DISTORTIONS) <= set(D.DISTORTIONS)
    rgb = _photo()
    for name, (apply, values) in D.DISTORTIONS.items():
        assert len(values) == len(D.LEVELS) and name in D.PARAM_NAMES
        for level in D.LEVELS:
            out = apply(rgb, level)
            assert out.dtype == np.uint8 and out.shape == rgb.shape, (name, level)
            assert not np.array_equal(out, rgb), f"{name} level {level} left the image unchanged"
            np.testing.assert_array_equal(out, D.distort(rgb, name, level))  # deterministic


def test_blur_lowers_high_frequency_energy_with_level():
    rgb = _photo()
    energy = _series("blur", rgb, _hf_energy)
    assert _strictly([_hf_energy(rgb), *energy], "down"), energy


def test_noise_raises_std_of_the_difference_with_level():
    rgb = _photo()
    stds = _series("noise", rgb, lambda out: float((out.astype(float) - rgb).std()))
    assert _strictly(stds, "up"), stds
    for std, sigma in zip(stds, D.DISTORTIONS["noise"].values):
        assert std == pytest.approx(sigma, rel=0.15)  # little clipping on this image
    # seeded: same seed, same noise; another seed, other noise
    np.testing.assert_array_equal(D.distort(rgb, "noise", 3, seed=1), D.distort(rgb, "noise", 3, seed=1))
    assert not np.array_equal(D.distort(rgb, "noise", 3, seed=1), D.distort(rgb, "noise", 3, seed=2))


def test_jpeg_file_size_falls_and_error_rises_with_level():
    rgb = _photo()
    sizes, errors = [], []
    for level in D.LEVELS:
        data, suffix = D.encode_distorted(rgb, "jpeg", level)
        assert suffix == ".jpg" and data[:2] == b"\xff\xd8"
        with Image.open(io.BytesIO(data)) as img:  # the stored file is what distort() returns
            np.testing.assert_array_equal(np.asarray(img.convert("RGB")), D.distort(rgb, "jpeg", level))
        sizes.append(len(data))
        errors.append(float(np.abs(D.distort(rgb, "jpeg", level).astype(float) - rgb).mean()))
    assert _strictly(sizes, "down"), sizes
    assert _strictly(errors, "up"), errors


def test_contrast_lowers_pixel_std_with_level():
    rgb = _photo()
    stds = _series("contrast", rgb, lambda out: float(out.astype(float).std()))
    assert _strictly([float(rgb.std()), *stds], "down"), stds


def test_exposure_raises_brightness_and_clipping_underexposure_lowers_brightness():
    rgb = _photo()
    means = _series("exposure", rgb, lambda out: float(out.mean()))
    clipped = _series("exposure", rgb, lambda out: float((out == 255).mean()))
    assert _strictly([float(rgb.mean()), *means], "up"), means
    assert np.all(np.diff(clipped) >= 0) and clipped[-1] > clipped[0], clipped
    darker = _series("underexposure", rgb, lambda out: float(out.mean()))
    assert _strictly([float(rgb.mean()), *darker], "down"), darker


def test_png_outputs_are_lossless():
    rgb = _photo()
    for name in ["blur", "noise", "contrast", "exposure"]:
        data, suffix = D.encode_distorted(rgb, name, 2, seed=5)
        assert suffix == ".png"
        with Image.open(io.BytesIO(data)) as img:
            np.testing.assert_array_equal(np.asarray(img), D.distort(rgb, name, 2, seed=5))


@pytest.mark.parametrize("name", ["blurr", "JPEG", "", None])
def test_unknown_distortion_is_named(name):
    with pytest.raises(ValueError, match=f"unknown distortion {name!r}.*known distortions: jpeg, blur"):
        D.distort(_photo(), name, 1)
    with pytest.raises(ValueError, match="unknown distortion"):
        D.check_request(["jpeg", name], [1])


@pytest.mark.parametrize("level", [0, 6, -1, 2.5, True, "3"])
def test_level_outside_range_is_named(level):
    with pytest.raises(ValueError, match=rf"distortion 'blur': level {level!r} is outside its range 1\.\.5"):
        D.distort(_photo(), "blur", level)
    with pytest.raises(ValueError, match="distortion 'jpeg': level"):
        D.check_request(["jpeg", "noise"], [1, level])


def test_bad_input_arrays_are_refused():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        D.distort(_photo().astype(float), "blur", 1)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        D.encode_distorted(_photo()[..., 0], "jpeg", 1)


# ----------------------------------------------------------------------------- the dataset

@pytest.fixture
def source(tmp_path):
    """A small canonical source dataset on disk (photo-like PNGs, MOS, a README notice)."""
    folder = tmp_path / "src"
    rows = []
    for i, mos in enumerate([30.0, 80.0, 55.0, 80.0, 10.0]):
        name = f"img{i}.png"
        if i == 4:
            write_image(folder / "images" / name, size=(64, 48), seed=i)
        else:
            (folder / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(_photo(64, 80, seed=i)).save(folder / "images" / name)
        rows.append({"image": name, "mos": mos, "mos_std": 5.0 + i})
    table = pd.DataFrame(rows)
    table.to_csv(folder / "labels.csv", index=False)
    (folder / "README.md").write_text("Copyright notice of the source\n")
    table["path"] = [str(folder / "images" / n) for n in table["image"]]
    table.attrs.update(dataset="fixture", folder=str(folder))
    return table


def _dataset_entries(tmp_path):
    base = tmp_path / "cache" / "datasets"
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


def test_layout_columns_and_loadable(source, tmp_path):
    root, name = D.make_distorted_dataset(source, 2, ["blur", "jpeg", "noise"], [1, 3], seed=0)
    assert name == "fixture_lab" and root.parent == tmp_path / "cache" / "datasets"
    lab = load_dataset(name, root=root)  # verifies every file's sha256
    assert list(lab.columns[:len(CANONICAL_COLUMNS)]) == CANONICAL_COLUMNS
    assert {"dist_param", "param_name", "mos_is_human", "path"} <= set(lab.columns)
    assert len(lab) == 2 * (1 + 3 * 2)
    # references: the two highest-MOS images (a tie at 80, broken by name), level 0
    refs = lab[lab["dist_type"] == "reference"]
    assert list(refs["ref"]) == ["img1.png", "img3.png"]
    assert (refs["dist_level"] == 0).all() and refs["mos_is_human"].all()
    assert list(refs["mos_std"]) == [6.0, 8.0]
    # the reference file is the source file, byte for byte
    assert open(refs["path"].iloc[0], "rb").read() == open(source["path"][1], "rb").read()
    dist = lab[lab["dist_type"] != "reference"]
    assert not dist["mos_is_human"].any() and dist["mos_std"].isna().all()
    assert set(zip(dist["dist_type"], dist["dist_level"])) == {(d, l) for d in ["blur", "jpeg", "noise"] for l in [1, 3]}
    for _, r in dist.iterrows():  # placeholder MOS = the reference's, flagged as not human
        assert r["mos"] == refs.set_index("ref").loc[r["ref"], "mos"]
        assert r["dist_param"] == D.DISTORTIONS[r["dist_type"]].values[r["dist_level"] - 1]
        assert r["image"].endswith(".jpg" if r["dist_type"] == "jpeg" else ".png")
    # stored pixels are exactly the distortion of the decoded reference (noise seeded per reference)
    row = dist[(dist["dist_type"] == "noise") & (dist["dist_level"] == 3)].iloc[0]
    ref_rgb = _photo(64, 80, seed=int(row["ref"][3]))
    expected = D.distort(ref_rgb, "noise", 3, seed=zlib.crc32(f"0:{row['ref']}".encode()))
    np.testing.assert_array_equal(np.asarray(Image.open(row["path"])), expected)
    folder = root / name
    assert (folder / "README.md").read_text() == "Copyright notice of the source\n"
    meta = json.loads((folder / "meta.json").read_text())
    assert "NOT a human label" in meta["mos_note"] and meta["references"] == ["img1.png", "img3.png"]
    assert not any(e.endswith(".partial") for e in _dataset_entries(tmp_path))


def test_cache_is_reused_and_keyed(source, tmp_path, monkeypatch):
    first = D.make_distorted_dataset(source, 2, ["blur"], [1, 2], seed=0)
    with monkeypatch.context() as m:  # (monkeypatch.undo() would also undo the isolated cache dir)
        m.setattr(D, "encode_distorted", lambda *a, **k: pytest.fail("rebuilt a cached lab"))
        assert D.make_distorted_dataset(source, 2, ["blur"], [1, 2], seed=0) == first
    keys = {first[0].name}
    for kwargs in [dict(n_refs=3), dict(levels=[1, 3]), dict(distortions=["blur", "noise"]), dict(seed=1)]:
        args = dict(n_refs=2, distortions=["blur"], levels=[1, 2], seed=0) | kwargs
        keys.add(D.make_distorted_dataset(source, **args)[0].name)
    changed = source.assign(sha256=["0" * 64] * len(source))  # other content, same names
    keys.add(D.make_distorted_dataset(changed, 2, ["blur"], [1, 2], seed=0)[0].name)
    monkeypatch.setattr(D, "DIST_VERSION", D.DIST_VERSION + 1)
    keys.add(D.make_distorted_dataset(source, 2, ["blur"], [1, 2], seed=0)[0].name)
    assert len(keys) == 7 and sorted(keys) == _dataset_entries(tmp_path)


def test_bad_requests_fail_before_any_work(source, tmp_path):
    with pytest.raises(ValueError, match="unknown distortion 'blurr'"):
        D.make_distorted_dataset(source, 2, ["blur", "blurr"], [1])
    with pytest.raises(ValueError, match="distortion 'jpeg': level 9 is outside"):
        D.make_distorted_dataset(source, 2, ["jpeg"], [1, 9])
    with pytest.raises(ValueError, match="n_refs=9 but only 5 candidate"):
        D.make_distorted_dataset(source, 9, ["jpeg"], [1])
    with pytest.raises(ValueError, match="n_refs must be a positive integer"):
        D.make_distorted_dataset(source, 0, ["jpeg"], [1])
    assert _dataset_entries(tmp_path) == []


def test_failed_encoding_is_named_and_leaves_no_entry(source, tmp_path, monkeypatch):
    def bad_apply(rgb, level, seed=0):  # level 1 works, level 2 returns floats
        return rgb if level == 1 else rgb.astype(np.float32)

    bad = D.Distortion(bad_apply, D.DISTORTIONS["blur"].values)
    monkeypatch.setitem(D.DISTORTIONS, "blur", bad)
    with pytest.raises(D.DistortionError, match=r"distorted image img1.png / blur level 2 could not be made.*float32"):
        D.make_distorted_dataset(source, 2, ["jpeg", "blur"], [1, 2])
    assert _dataset_entries(tmp_path) == []


def test_unreadable_reference_is_named_and_leaves_no_entry(source, tmp_path):
    open(source["path"][1], "wb").write(b"not an image")
    with pytest.raises(ValueError, match="img1.png: cannot decode image"):
        D.make_distorted_dataset(source.drop(columns="sha256", errors="ignore"), 2, ["blur"], [1])
    assert _dataset_entries(tmp_path) == []


def test_stale_partial_folder_is_replaced(source, tmp_path):
    root, name = D.make_distorted_dataset(source, 1, ["contrast"], [1])
    key = root.name
    import shutil

    shutil.rmtree(root)
    stale = root.with_name(key + ".partial")
    (stale / "junk").mkdir(parents=True)
    again, _ = D.make_distorted_dataset(source, 1, ["contrast"], [1])
    assert again == root and _dataset_entries(tmp_path) == [key]
    assert len(load_dataset(name, root=root)) == 2


# ----------------------------------------------------------------------------- measurements

def _lab_table():
    rows = [{"ref": r, "dist_type": "reference", "dist_level": 0} for r in "ab"]
    rows += [{"ref": r, "dist_type": d, "dist_level": l} for r in "ab" for d in ["blur", "noise"] for l in [1, 2, 3]]
    return pd.DataFrame(rows)


def test_within_reference_srcc_signs():
    table = _lab_table()
    level = table["dist_level"].to_numpy(float)
    falling = np.where(table["dist_type"] == "noise", level, -level)  # rises for noise, falls for blur
    falling[(table["ref"] == "b").to_numpy() & (table["dist_type"] == "noise").to_numpy()] = 7.0
    falling[(table["ref"] == "b").to_numpy() & (table["dist_type"] == "reference").to_numpy()] = 7.0
    out = D.within_reference_srcc(table, falling).set_index(["ref", "dist_type"])["srcc"]
    assert out[("a", "blur")] == pytest.approx(1.0) and out[("b", "blur")] == pytest.approx(1.0)
    assert out[("a", "noise")] == pytest.approx(-1.0)
    assert np.isnan(out[("b", "noise")])  # constant scores: no order
    with pytest.raises(ValueError, match="scores for a table"):
        D.within_reference_srcc(table, falling[:-1])


def test_own_and_other_distances():
    table = _lab_table()
    x = np.zeros((len(table), 2))
    x[1] = [3.0, 4.0]                                   # reference b
    x[2:] = table["dist_level"].to_numpy()[2:, None] * [1.0, 0.0]
    x[table.index[(table["ref"] == "b") & (table["dist_type"] != "reference")]] += [3.0, 4.0]
    own, between = D.own_and_other_distances(x, table)
    assert len(own) == 12 and np.allclose(own["distance"], own["dist_level"])
    np.testing.assert_allclose(between, [5.0])


def test_notebook_declares_the_lab_parameters():
    from qfm_lib import batch

    path = batch.NOTEBOOK_DIR / "07_distortion_lab.ipynb"
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"]["tags"]
    declared = {line.split("=")[0].strip() for line in "".join(code[0]["source"]).splitlines() if "=" in line}
    assert {"dataset", "backbone", "seed", "n_refs", "distortions", "levels", "scorers", "profile", "out_dir"} <= declared
    assert set(nb["metadata"]["qfm"]["profiles"]["smoke"]) <= declared
    assert not any(c.get("outputs") or c.get("execution_count") for c in code)
    assert 'matplotlib.use("Agg")' not in "".join("".join(c["source"]) for c in code)
