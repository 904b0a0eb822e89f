import warnings

import numpy as np
import pandas as pd
import pytest

import qfm_lib.features as F
from qfm_lib.features import FeatureSpec, crop_boxes_for, extract_features
from qfm_lib.images import ImageError, load_rgb

from .conftest import outputs_on_thread_counts, write_image


def _table(paths):
    return pd.DataFrame({"image": [p.name for p in paths], "path": [str(p) for p in paths]})


def _entries(tmp_path):
    base = tmp_path / "cache" / "features"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.exists() else []


@pytest.fixture
def small_livec(livec):
    return livec.head(5).reset_index(drop=True)


def test_layout_determinism_and_warm_cache(small_livec, lite0, tmp_path, monkeypatch):
    spec = FeatureSpec(n_crops=2, crop_size=224, crop_seed=3)
    feats = extract_features(small_livec, spec, lite0, progress=False)
    assert feats.full.shape == (5, 2 * sum(lite0.stage_channels))
    assert feats.crops.shape == (5, 2, feats.full.shape[1])
    assert feats.crop_boxes.shape == (5, 2, 4)
    assert feats.embedding().shape == (5, 1280)
    assert (feats.stage("block3", "std") >= 0).all()
    # warm: served from the cache without touching the backbone
    forward_views = F._forward_views
    monkeypatch.setattr(F, "_forward_views", lambda *a, **k: pytest.fail("recomputed a cached entry"))
    again = extract_features(small_livec, spec, lite0, progress=False)
    np.testing.assert_array_equal(feats.full, again.full)
    np.testing.assert_array_equal(feats.crops, again.crops)
    assert len(_entries(tmp_path)) == 2 and not any(e.endswith(".partial") for e in _entries(tmp_path))
    monkeypatch.setattr(F, "_forward_views", forward_views)  # a second, independent extraction: the same bytes
    fresh = extract_features(small_livec, spec, lite0, progress=False, root=tmp_path / "other")
    np.testing.assert_array_equal(feats.full, fresh.full)
    np.testing.assert_array_equal(feats.crops, fresh.crops)


def test_same_numbers_as_a_direct_forward(small_livec, lite0):
    import torch

    feats = extract_features(small_livec.head(1), FeatureSpec(), lite0, progress=False)
    x = F.to_tensor(load_rgb(small_livec["path"][0]), lite0)[None]
    with torch.no_grad():
        head = lite0.model.forward_features(x)
        pooled = lite0.model.forward_head(head, pre_logits=True)
    np.testing.assert_allclose(feats.embedding()[0], pooled[0].numpy(), rtol=1e-4, atol=1e-5)


def test_key_depends_on_content_and_parameters(small_livec, lite0, tmp_path):
    extract_features(small_livec.head(2), FeatureSpec(), lite0, progress=False)
    extract_features(small_livec.head(2), FeatureSpec(resize=256), lite0, progress=False)
    changed = small_livec.head(2).assign(sha256=["0" * 64, small_livec["sha256"][1]])
    extract_features(changed, FeatureSpec(), lite0, progress=False)
    assert len(_entries(tmp_path)) == 3


def _killed_on_second_chunk(table, backbone, monkeypatch) -> dict:
    """Run an extraction that is interrupted at its second chunk (one forward call per chunk: whole
    images are batched); returns the call counter."""
    calls, real = {"n": 0}, F._forward_views

    def dies_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "_forward_views", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        extract_features(table, FeatureSpec(), backbone, progress=False)
    return calls


@pytest.mark.parametrize("edit, moves", [("\nEXTRA = 1\n", True), ("\n# a comment\n", False)])
def test_key_depends_on_the_code_that_extracts(package_copy, edit, moves):
    # images.py decodes every image: editing its code must not reuse features (or the token windows'
    # saliency, the tail's input, BRISQUE's features) cached by the old code; a comment changes nothing.
    # The keys are read from a copy of the sources, whose images.py is then edited.
    from types import SimpleNamespace

    from qfm_lib.cache import code_digest

    backbone = SimpleNamespace(name="b", weights_sha256="0", mean=(0.5,), std=(0.5,))
    users = ("features", "saliency", "tail", "baselines", "distortions")

    def keys():
        code_digest.cache_clear()
        return [F.cache_key(["a"], ["h"], backbone, FeatureSpec(), False)] + [code_digest(m) for m in users]

    before = keys()
    (package_copy / "images.py").write_text((package_copy / "images.py").read_text() + edit)
    after = keys()
    assert [a != b for a, b in zip(after, before)] == [moves] * (1 + len(users))


def test_killed_run_resumes_from_finished_chunks(small_livec, lite0, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_IMAGES", 2)
    clean = extract_features(small_livec, FeatureSpec(), lite0, progress=False, root=tmp_path / "clean")
    real = F._forward_views
    calls = _killed_on_second_chunk(small_livec, lite0, monkeypatch)
    partial = [e for e in _entries(tmp_path) if e.endswith(".partial")]
    assert len(partial) == 1 and len(_entries(tmp_path)) == 1  # no complete entry, one partial
    calls["n"] = -100
    monkeypatch.setattr(F, "_forward_views", lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1])
    resumed = extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    assert calls["n"] == -100 + 2  # chunk 0 (2 images) was reused; the other 2 chunks recomputed
    np.testing.assert_allclose(resumed.full, clean.full, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(resumed.tokens), np.asarray(clean.tokens))
    assert resumed.tokens.shape == (int(clean.token_grid.prod(1).sum()), len(clean.token_channels))
    assert not any(e.endswith(".partial") for e in _entries(tmp_path))


def test_damaged_or_foreign_entry_is_refused_by_name(small_livec, lite0, tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(F, "CHUNK_IMAGES", 2)
    extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    (entry,) = [tmp_path / "cache" / "features" / e for e in _entries(tmp_path)]
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "backbone": "tf_efficientnet_lite2"}))
    with pytest.raises(ValueError, match=f"{entry.name}: it holds features of tf_efficientnet_lite2 .*delete that folder"):
        extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    (entry / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "n_images"}))
    with pytest.raises(ValueError, match="its meta.json cannot be read .KeyError.*delete that folder"):
        extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    (entry / "meta.json").write_text(json.dumps(meta))
    tokens = (entry / "tokens.npy").read_bytes()
    (entry / "tokens.npy").write_bytes(tokens[:len(tokens) // 2])
    with pytest.raises(ValueError, match="its token maps cannot be read .ValueError"):
        extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    (entry / "tokens.npy").write_bytes(tokens)
    np.save(entry / "grid.npy", np.load(entry / "grid.npy")[:-1])
    with pytest.raises(ValueError, match="its token maps hold .* cells and its grid.npy 4 grids .* for 5 images"):
        extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    sorted(entry.glob("chunk_*.npz"))[-1].unlink()
    with pytest.raises(ValueError, match="it holds 4 images' features, its meta.json says 5 .*damaged"):
        extract_features(small_livec, FeatureSpec(), lite0, progress=False)


def test_partial_entry_without_its_token_file_is_refused(small_livec, lite0, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_IMAGES", 2)
    real = F._forward_views
    _killed_on_second_chunk(small_livec, lite0, monkeypatch)
    (partial,) = [p for p in (tmp_path / "cache" / "features").iterdir() if p.name.endswith(".partial")]
    (partial / "tokens.npy").unlink()  # finished chunks remain: their tokens must not become zeros
    monkeypatch.setattr(F, "_forward_views", real)
    with pytest.raises(RuntimeError, match="no tokens.npy"):
        extract_features(small_livec, FeatureSpec(), lite0, progress=False)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_convertible_modes(tmp_path, lite0, mode):
    path = write_image(tmp_path / f"img_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}",
                       mode=mode)
    assert load_rgb(path).mode == "RGB"
    feats = extract_features(_table([path]), FeatureSpec(), lite0, progress=False)
    assert np.isfinite(feats.full).all()


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    from PIL import Image

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(path)
    assert abs(int(np.asarray(load_rgb(path))[0, 0, 0]) - 128) <= 1


def test_sixteen_bit_holding_twelve_bit_values_is_scaled_as_sixteen_with_a_warning(tmp_path):
    from PIL import Image

    from qfm_lib.images import ImageWarning

    for name, value in (("sensor.png", 4000), ("dark.png", 200)):
        Image.fromarray(np.full((40, 40), value, dtype=np.uint16)).save(tmp_path / name)
        with pytest.warns(ImageWarning, match=rf"{name}: an integer image \(mode I;16\) whose largest value is {value},"):
            assert np.asarray(load_rgb(tmp_path / name))[0, 0, 0] == round(value / 65535 * 255)  # not brightened
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_rgb(tmp_path / "sensor.png")  # once per file


def test_float_image_with_nan_pixels_is_refused_by_name(tmp_path):
    from PIL import Image

    pixels = np.full((40, 40), 0.5, np.float32)
    pixels[:3, :5] = np.nan
    Image.fromarray(pixels).save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match=r"nan\.tif: .*15 of its 1600 pixels are NaN or infinite"):
        load_rgb(tmp_path / "nan.tif")


@pytest.mark.parametrize("name, pixels, says", [
    ("signed.tif", np.linspace(-200, 200, 1600, dtype=np.float32), "from -200 to 200, outside the 0..255"),
    ("wide.tif", np.linspace(0, 1e6, 1600).astype(np.int32), "from 0 to 1e\\+06, outside the 0..65535"),
])
def test_values_outside_the_scale_are_refused_by_name(tmp_path, name, pixels, says):
    """Clipped to 0..255 they would be scored as another image (half black, or nearly all white); a
    rounding error below half an 8-bit level, which clipping does not change, is accepted."""
    from PIL import Image

    Image.fromarray(pixels.reshape(40, 40)).save(tmp_path / name)
    with pytest.raises(ImageError, match=rf"{name}: its values run {says} it would be scaled from"):
        load_rgb(tmp_path / name)
    almost = np.linspace(-1e-6, 1, 1600, dtype=np.float32).reshape(40, 40)
    Image.fromarray(almost).save(tmp_path / "almost.tif")
    assert np.asarray(load_rgb(tmp_path / "almost.tif"))[0, 0, 0] == 0


def test_exif_orientation_applied(tmp_path):
    from PIL import Image

    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:, :30] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    path = tmp_path / "rotated.png"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), upright)


@pytest.mark.parametrize("pixels", [3000, 1000])  # Pillow warns (our limit speaks), Pillow refuses
def test_huge_image_named_with_the_limit(tmp_path, monkeypatch, pixels):
    from PIL import Image

    import qfm_lib.images as I

    path = write_image(tmp_path / "huge.png", size=(40, 40))  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels // 2)
    monkeypatch.setattr(I, "MAX_PIXELS", 1500)
    with pytest.raises(ImageError, match="huge.png.*exceeds 1500 pixels.*downscale it first"):
        load_rgb(path)


@pytest.mark.parametrize("value, expected", [(0.5, 128), (128.0, 128)])
def test_float_images_in_0_1_or_0_255(tmp_path, value, expected):
    from PIL import Image

    path = tmp_path / "float.tif"
    Image.fromarray(np.full((40, 40), value, dtype=np.float32)).save(path)
    assert abs(int(np.asarray(load_rgb(path))[0, 0, 0]) - expected) <= 1


def test_float_image_just_above_one(tmp_path):
    """Within half an 8-bit level above 1 it is a 0..1 image with a rounding error, and comes out white;
    further above 1 (but below 2) it is scaled from 0..255, comes out black, and the warning says so."""
    from PIL import Image

    from qfm_lib.images import ImageWarning

    Image.fromarray(np.full((40, 40), 1.001, dtype=np.float32)).save(tmp_path / "rounded.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.asarray(load_rgb(tmp_path / "rounded.tif"))[0, 0, 0] == 255
    Image.fromarray(np.full((40, 40), 1.05, dtype=np.float32)).save(tmp_path / "overshoot.tif")
    with pytest.warns(ImageWarning, match=r"overshoot\.tif: a floating-point image whose largest value is 1\.05,"):
        assert np.asarray(load_rgb(tmp_path / "overshoot.tif"))[0, 0, 0] == 1


def _bad_images(tmp_path):
    good = write_image(tmp_path / "good.png", size=(300, 300))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    truncated = tmp_path / "truncated.jpg"
    write_image(tmp_path / "full.jpg", size=(300, 300)).rename(truncated)
    truncated.write_bytes(truncated.read_bytes()[:400])
    tiny = write_image(tmp_path / "tiny.png", size=(20, 20))
    return good, {"corrupt.jpg": corrupt, "truncated.jpg": truncated, "tiny.png": tiny,
                  "missing.png": tmp_path / "missing.png"}


@pytest.mark.parametrize("bad", ["corrupt.jpg", "truncated.jpg", "tiny.png", "missing.png"])
def test_bad_image_named_and_no_partial_cache(tmp_path, lite0, bad):
    good, bads = _bad_images(tmp_path)
    with pytest.raises(ImageError, match=bad):
        extract_features(_table([good, bads[bad]]), FeatureSpec(), lite0, progress=False)
    assert _entries(tmp_path) == []


def test_image_smaller_than_crop(tmp_path, lite0):
    small = write_image(tmp_path / "small.png", size=(100, 120))
    with pytest.raises(ImageError, match="small.png.*smaller than crop_size 224"):
        extract_features(_table([small]), FeatureSpec(n_crops=2), lite0, progress=False)
    assert not any("partial" in e for e in _entries(tmp_path))


def test_duplicate_names_and_bad_spec(small_livec, lite0):
    with pytest.raises(ValueError, match="duplicate image name"):
        extract_features(pd.concat([small_livec.head(1)] * 2), FeatureSpec(), lite0, progress=False)
    with pytest.raises(ValueError, match="n_crops"):
        FeatureSpec(n_crops=-1)


def test_crop_boxes_seeded_and_inside():
    spec = FeatureSpec(n_crops=6, crop_size=224, crop_seed=1)
    a, b = crop_boxes_for("x.png", 500, 400, spec), crop_boxes_for("x.png", 500, 400, spec)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, crop_boxes_for("y.png", 500, 400, spec))
    assert (a[:, 0] + a[:, 2] <= 500).all() and (a[:, 1] + a[:, 3] <= 400).all()


def test_onnxruntime_matches_the_pytorch_reference(small_livec, lite0, tmp_path):
    fast = extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    ref = extract_features(small_livec, FeatureSpec(engine="torch"), lite0, progress=False)
    assert len(_entries(tmp_path)) == 2  # the engine is part of the key
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    # measured on LIVEC: pooled statistics differ by <= 2e-4, token cells by one fp16 rounding step
    np.testing.assert_allclose(fast.full, ref.full, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(fast.tokens.astype(np.float32), ref.tokens.astype(np.float32), rtol=2e-3, atol=1e-3)
    np.testing.assert_array_equal(fast.token_grid, ref.token_grid)


def test_onnxruntime_extraction_does_not_depend_on_the_thread_count(small_livec, lite0, tmp_path):
    """Cached features are computed on whatever thread count the process runs (1 in a row worker, all
    cores in a notebook) and later compared bit for bit: ONNX Runtime must give the same bits on 1 and 2
    intra-op threads (PyTorch's convolutions do not: features.one_torch_thread)."""
    from qfm_lib.features import run_views, to_tensor

    x = to_tensor(load_rgb(small_livec["path"][0]), lite0)[None]
    # a new engine per count: OnnxEngine takes its intra-op thread count from torch's when it is built
    outs = outputs_on_thread_counts(lambda: run_views(F.forward_engine(lite0, "onnxruntime", tmp_path), x, tokens=True))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        FeatureSpec(engine="tensorrt")


def test_concurrent_extractions_of_one_entry_share_it(small_livec, lite0, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: extract_features(small_livec, FeatureSpec(), lite0, progress=False), range(2)))
    np.testing.assert_array_equal(np.asarray(runs[0].tokens), np.asarray(runs[1].tokens))
    assert len(_entries(tmp_path)) == 1


def test_unfinished_token_bytes_are_dropped_on_resume(small_livec, lite0, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_IMAGES", 2)
    clean = extract_features(small_livec, FeatureSpec(), lite0, progress=False, root=tmp_path / "clean")
    real = F.atomic_write

    def dies_writing_chunk_2(path, *args, **kwargs):  # its token bytes are appended, its npz is not written
        if path.name == "chunk_000002.npz":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(F, "atomic_write", dies_writing_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    monkeypatch.setattr(F, "atomic_write", real)
    resumed = extract_features(small_livec, FeatureSpec(), lite0, progress=False)
    np.testing.assert_array_equal(np.asarray(resumed.tokens), np.asarray(clean.tokens))


def test_exported_graph_handles_odd_image_sizes(lite0, tmp_path):
    import torch

    # the graph is traced at 256x256; 'same' padding and pooling must still follow the input's size
    fast, ref = F.forward_engine(lite0, "onnxruntime", tmp_path), F.forward_engine(lite0, "torch")
    x = torch.randn(1, 3, 333, 517)
    for a, b in zip(fast(x), ref(x)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-3)


def test_torch_engine_leaves_the_callers_backbone_alone(lite0):
    import torch

    weight = lite0.model.conv_stem.weight
    was_training, was_ptr = lite0.model.training, weight.data_ptr()
    lite0.model.train()
    try:
        F.forward_engine(lite0, "torch")
        assert lite0.model.training  # not switched to eval
        assert lite0.model.conv_stem.weight.data_ptr() == was_ptr  # not converted to channels-last in place
        assert lite0.model.conv_stem.weight.is_contiguous(memory_format=torch.contiguous_format)
    finally:
        lite0.model.train(was_training)
