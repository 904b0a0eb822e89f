"""`qfm predict` hardening: safe model files, clear errors, folders, huge images, progress."""
import pickle
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from qfm_lib import predict
from qfm_lib.cli import main as cli_main
from qfm_lib.features import FeatureSpec
from qfm_lib.models import TrainConfig, train_model

from .conftest import write_image


def _trained(d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, d))
    y = 50 + 10 * x[:, 0] + rng.normal(0, 1, 60)
    return train_model(x[:45], y[:45], x[45:], y[45:], TrainConfig(max_epochs=2, hidden=16, gate_hidden=8)), x


def _table(paths=()):
    n = max(2, len(paths))
    table = pd.DataFrame({"image": [f"i{i}" for i in range(n)], "sha256": ["0" * 64] * n, "mos": np.linspace(20, 80, n)})
    if paths:
        table["path"] = [str(p) for p in paths]
    return table


def _not_models(folder):
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    (folder / "text.pt").write_text("hello, I am a text file\n")
    (folder / "pickle.pt").write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    (folder / "object.pt").write_bytes(pickle.dumps(Path("x")))  # a pickled object: never rebuilt
    torch.save({"path": Path("x")}, folder / "torch_object.pt")
    torch.save({"weights": torch.zeros(3)}, folder / "tensors.pt")
    torch.save([1, 2], folder / "list.pt")
    return ["random", "text", "pickle", "object", "torch_object", "tensors", "list"]


def test_not_a_model_file_is_a_clean_error(tmp_path, capsys):
    img = write_image(tmp_path / "a.png")
    for stem in _not_models(tmp_path):
        model = tmp_path / f"{stem}.pt"
        assert cli_main(["predict", str(img), "--model", str(model)]) == 2, stem
        err = capsys.readouterr().err
        assert f"{model} is not a qfm model file: " in err and "Traceback" not in err, err
        assert len(err.splitlines()) == 1, err
        with pytest.raises(predict.ModelFileError, match="is not a qfm model file"):
            predict.load_model(model)


def test_old_format_and_unknown_kind_say_how_to_rebuild(tmp_path):
    trained, _ = _trained(6)
    old = tmp_path / "old.pt"
    torch.save({"model": trained.state(), "backbone": "tf_efficientnet_lite0", "weights_sha256": "x",
                "feature_spec": {}}, old)  # format 1: numpy arrays inside
    with pytest.raises(predict.ModelFileError, match=r"old\.pt is a qfm model file of an older format.*make figures"):
        predict.load_model(old)
    unknown = tmp_path / "unknown.pt"
    torch.save({"format_version": predict.FORMAT_VERSION, "model_kind": "vision-llm", "model": {}}, unknown)
    with pytest.raises(predict.ModelFileError, match=r"kind 'vision-llm'.*known kinds: \['mean', 'pooled-crops', 'pooled-mlp', 'token-decoder'\].*make figures"):
        predict.load_model(unknown)
    future = tmp_path / "future.pt"
    torch.save({"format_version": 99, "model_kind": "pooled-mlp"}, future)
    with pytest.raises(predict.ModelFileError, match="format_version 99.*saved by an unknown qfm_lib.*make figures"):
        predict.load_model(future)
    torch.save({"format_version": str(predict.FORMAT_VERSION), "model_kind": "pooled-mlp", "qfm_lib_version": "9"}, future)
    with pytest.raises(predict.ModelFileError, match=f"format_version '{predict.FORMAT_VERSION}'.*saved by qfm_lib 9"):
        predict.load_model(future)
    with pytest.raises(predict.ModelFileError, match=r"is a folder: pass the model file, e.g. --model .*qfm_livec\.pt"):
        predict.load_model(tmp_path)
    truncated = tmp_path / "truncated.pt"
    path = predict.save_model(trained, tmp_path / "whole.pt", "tf_efficientnet_lite0", "x", FeatureSpec(), _table())
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(predict.ModelFileError, match="not a PyTorch checkpoint .*damaged or truncated"):
        predict.load_model(truncated)


def test_an_unreadable_model_file_is_named_as_such(tmp_path, monkeypatch):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(predict.Path, "open", denied)
    with pytest.raises(predict.ModelFileError, match=r"m\.pt cannot be read \(Permission denied\)"):
        predict.load_model(model)


def test_model_file_loads_with_weights_only_and_is_world_readable(tmp_path):
    trained, x = _trained(12)
    path = predict.save_model(trained, tmp_path / "models" / "m.pt", "tf_efficientnet_lite0", "abc",
                              FeatureSpec(), _table(), extra={"variant": "gated", "score": np.float64(0.5)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(path.parent.glob(".*.tmp"))
    raw = torch.load(path, weights_only=True)
    assert raw["model_kind"] == "pooled-mlp" and raw["format_version"] == predict.FORMAT_VERSION
    assert raw["score"] == 0.5 and raw["variant"] == "gated"
    loaded = predict.load_model(path)["predictor"]
    np.testing.assert_array_equal(loaded.predict(x), trained.predict(x))


def test_folder_gif_huge_image_note_and_progress(tmp_path, lite0, capsys):
    training = [tmp_path / "train" / f"t{i}.png" for i in range(3)]
    for p in training:
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (500, 500), (90, 120, 150)).save(p)
    trained, _ = _trained(2 * sum(lite0.stage_channels))
    model = predict.save_model(trained, tmp_path / "m.pt", lite0.name, lite0.weights_sha256, FeatureSpec(),
                               _table(training))
    folder = tmp_path / "photos"
    write_image(folder / "wide.png", size=(1400, 350))
    write_image(folder / "ok.jpg", size=(480, 360), seed=1)
    Image.open(write_image(folder / "sub" / "anim.png", size=(64, 64), seed=2)).save(folder / "sub" / "anim.GIF")
    (folder / "sub" / "anim.png").unlink()
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in predict.expand_paths([folder])] == ["ok.jpg", "anim.GIF", "wide.png"]

    out = tmp_path / "scores.csv"
    (tmp_path / "empty").mkdir()  # an empty folder beside the others is named, and changes nothing else
    assert cli_main(["predict", str(folder), str(tmp_path / "empty"), "--model", str(model), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"no image files in the folder {tmp_path / 'empty'}" in err and "scoring" in err  # tqdm on stderr
    scores = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert list(scores.columns) == ["score", "error", "note"] and np.isfinite(scores["score"].astype(float)).all()
    assert scores.loc[str(folder / "wide.png"), "note"] == "resized from 1400x350 to 1024x256 (max side 1024)"
    assert scores.loc[str(folder / "ok.jpg"), "note"] == ""
    assert scores.loc[str(folder / "sub" / "anim.GIF"), "note"].startswith("scored at 64x64, 0.13x the training")

    native = predict.predict_images([folder / "wide.png"], model, max_side=0)
    assert native.loc[0, "note"].startswith("scored at 1400x350, 2.8x the training images' longer side (500 px)")
    assert "scoring" not in capsys.readouterr().err  # one image: no progress bar


def test_any_failure_is_one_images_error_and_bad_runs_stop_before_scoring(tmp_path, lite0, monkeypatch, capsys):
    """Whatever fails while scoring one image (here a simulated RuntimeError, and a downscale that leaves a
    side below the backbone's minimum) is that image's error, naming it; an empty folder and an output
    that cannot be written stop with exit 2 before anything is scored."""
    training = [tmp_path / "train" / f"t{i}.png" for i in range(3)]
    for p in training:
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (500, 500), (90, 120, 150)).save(p)
    trained, _ = _trained(2 * sum(lite0.stage_channels))
    model = str(predict.save_model(trained, tmp_path / "m.pt", lite0.name, lite0.weights_sha256, FeatureSpec(),
                                   _table(training)))
    folder = tmp_path / "photos"
    good, thin, boom = (write_image(folder / n, size=s) for n, s in
                        [("good.png", (480, 360)), ("thin.png", (2000, 40)), ("boom.png", (300, 300))])
    real = predict.to_tensor

    def failing(img, *args):
        if img.size == (300, 300):
            raise RuntimeError("simulated out of memory")
        return real(img, *args)

    monkeypatch.setattr(predict, "to_tensor", failing)
    out = tmp_path / "scores.csv"
    assert cli_main(["predict", str(folder), "--model", model, "-o", str(out), "--no-progress"]) == 1
    scores = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert np.isfinite(float(scores.loc[str(good), "score"]))
    assert scores.loc[str(boom), "error"] == f"{boom}: RuntimeError: simulated out of memory"
    assert scores.loc[str(thin), "error"].startswith(f"{thin}: downscaled from 2000x40 to 1024x20 (max side 1024), "
                                                     "its shorter side is below 32 px")
    assert "2 of 3 images failed" in capsys.readouterr().err

    import psutil  # an image that needs more memory than is available is its own error, not a killed run
    per_pixel = predict.SCORING_BYTES_PER_PIXEL
    monkeypatch.setattr(predict, "SCORING_BYTES_PER_PIXEL", psutil.virtual_memory().available / (480 * 360) * 1.5)
    scores = predict.predict_images([good, thin], model, max_side=0, progress=False).set_index("image")
    assert scores.loc[str(good), "error"].startswith(f"{good}: scoring it at 480x360 needs about ")
    assert scores.loc[str(good), "error"].endswith("pass --max-side (default 1024)")
    assert np.isfinite(scores.loc[str(thin), "score"])  # 2000x40: half the pixels, within the memory
    monkeypatch.setattr(predict, "SCORING_BYTES_PER_PIXEL", per_pixel)

    def model_fault(img, *args):
        raise predict.ModelFileError("this model's feature spec has no crops")

    monkeypatch.setattr(predict, "to_tensor", model_fault)  # a model's fault stops the run: not one error per image
    assert cli_main(["predict", str(folder), "--model", model, "--no-progress"]) == 2
    assert "feature spec has no crops" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert cli_main(["predict", str(empty), "--model", model, "--no-progress"]) == 2
    assert "no image files in" in capsys.readouterr().err
    monkeypatch.setattr(predict, "load_model", lambda *a: pytest.fail("loaded the model although nothing can be scored or written"))
    assert cli_main(["predict", str(empty), "--model", str(tmp_path / "absent.pt"), "--no-progress"]) == 2
    assert "nothing was scored" in capsys.readouterr().err  # not the missing model
    assert cli_main(["predict", str(folder), "--model", model, "-o", str(tmp_path / "absent" / "s.csv")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert cli_main(["predict", str(folder), "--model", model, "-o", str(empty)]) == 2
    assert f"cannot write {empty} (it is a folder" in capsys.readouterr().err


def test_model_of_another_qfm_lib_or_damaged_and_other_weights(tmp_path, lite0):
    trained, _ = _trained(6)
    path = predict.save_model(trained, tmp_path / "m.pt", "tf_efficientnet_lite0", "other-weights", FeatureSpec(), _table())
    raw = torch.load(path, weights_only=True)
    del raw["weights_sha256"]
    for version, says in [("0.0.1", r"was saved by qfm_lib 0\.0\.1 \(this is .*\) and does not load here"),
                          (raw["qfm_lib_version"], "is damaged")]:
        torch.save({**raw, "qfm_lib_version": version}, tmp_path / "bad.pt")
        with pytest.raises(predict.ModelFileError, match=f"bad\\.pt: this 'pooled-mlp' qfm model {says}: .*it has no weights_sha256.*make figures"):
            predict.load_model(tmp_path / "bad.pt")
    raw = torch.load(path, weights_only=True)
    for field, says in [({"legacy_field": 1}, "legacy_field"), ({"engine": "tensorrt"}, "unknown engine 'tensorrt'")]:
        torch.save({**raw, "feature_spec": {**raw["feature_spec"], **field}}, tmp_path / "spec.pt")
        with pytest.raises(predict.ModelFileError, match=f"spec\\.pt: this 'pooled-mlp' qfm model is damaged: .*{says}.*make figures"):
            predict.load_model(tmp_path / "spec.pt")
    with pytest.raises(predict.ModelFileError, match=r"m\.pt: the installed tf_efficientnet_lite0 weights .* differ .*make figures"):
        predict.predict_images([tmp_path / "x.png"], str(path), progress=False)


def test_compare_rejects_a_tolerance_that_is_not_a_finite_non_negative_number(capsys):
    for bad in ("nan", "-0.1", "inf"):
        assert cli_main(["compare", "--tolerance", bad]) == 2
        assert "--tolerance must be a finite number >= 0" in capsys.readouterr().err


def test_token_decoder_model_roundtrip_and_small_image(tmp_path, lite0, livec):
    """A token-decoder final model saves, loads with weights_only and scores a real photo; an image
    smaller than its window gets an error row naming the reason."""
    from dataclasses import replace

    from qfm_lib.decoder import DecoderConfig, fit_decoder
    from qfm_lib.tokens import TokenSet
    from qfm_lib.features import FeatureSpec, extract_features

    table = livec.head(12).reset_index(drop=True)
    feats = extract_features(table, FeatureSpec(), lite0, progress=False)
    tokens = TokenSet(feats.tokens, feats.token_grid, feats.names)
    cfg = replace(DecoderConfig(), dim=16, heads=2, gate_hidden=8, max_epochs=2, patience=2)
    trained = fit_decoder(tokens, table["mos"].to_numpy(float), np.arange(8), np.arange(8, 12), cfg)
    path = predict.save_model(trained, tmp_path / "tok.pt", "tf_efficientnet_lite0", lite0.weights_sha256,
                              FeatureSpec(), table, model_kind="token-decoder")
    payload = predict.load_model(path)
    tiny = write_image(tmp_path / "tiny.png", size=(120, 100))
    scores = predict.predict_images([table["path"][0], tiny], payload, progress=False)
    expected = trained.predict(tokens, np.array([0]))[0]
    assert scores["score"][0] == pytest.approx(expected, rel=1e-4)
    assert "too small for this model" in scores["error"][1] and np.isnan(scores["score"][1])


def test_mean_model_of_a_token_decoder_and_a_crop_model_scores_a_real_photo(tmp_path, lite0, livec):
    """A "mean" final model (ensembles.fit_final) saves, loads with weights_only and scores a real photo
    as the mean of its members, from crop features equal to the study's (same seeded boxes for the same
    file name); an image smaller than a crop gets an error row naming the file."""
    from dataclasses import replace

    from qfm_lib.decoder import DecoderConfig, fit_decoder
    from qfm_lib.tokens import TokenSet
    from qfm_lib.features import extract_features
    from qfm_lib.manifold import ManifoldConfig, train_crop_model

    table = livec.head(12).reset_index(drop=True)
    spec = FeatureSpec(n_crops=2)
    feats = extract_features(table, spec, lite0, progress=False)
    tokens = TokenSet(feats.tokens, feats.token_grid, feats.names)
    y = table["mos"].to_numpy(float)
    cfg = replace(DecoderConfig(), dim=16, heads=2, gate_hidden=8, max_epochs=2, patience=2)
    decoders = [fit_decoder(tokens, y, np.arange(8), np.arange(8, 12), replace(cfg, seed=s)) for s in (0, 1)]
    order = np.tile(np.arange(2), (8, 1))
    crops = train_crop_model(feats.crops[:8], order, y[:8], feats.crops[8:], y[8:], ManifoldConfig(max_epochs=2, hidden=16))
    mean = predict.MeanOfModels([("tok", "token-decoder", decoders), ("crop", "pooled-crops", [crops])])
    path = predict.save_model(mean, tmp_path / "mean.pt", "tf_efficientnet_lite0", lite0.weights_sha256, spec,
                              table, model_kind="mean")
    payload = predict.load_model(path)
    tiny = write_image(tmp_path / "tiny.png", size=(200, 150))
    scores = predict.predict_images([table["path"][0], tiny], payload, progress=False)
    token_part = np.mean([d.predict(tokens, np.array([0]))[0] for d in decoders])
    expected = (token_part + crops.predict(feats.crops[:1])[0]) / 2
    assert scores["score"][0] == pytest.approx(expected, rel=1e-4)
    assert "too small for this model: it is 200x150 px, the model reads 224x224-px crops" in scores["error"][1]
    with pytest.raises(ValueError, match="member 'crop': needs models of one of"):
        predict.MeanOfModels([("crop", "pooled-crops", [])])
    no_crops = predict.save_model(mean, tmp_path / "no_crops.pt", "tf_efficientnet_lite0", lite0.weights_sha256,
                                  replace(spec, n_crops=0), table, model_kind="mean")
    with pytest.raises(predict.ModelFileError, match=f"{no_crops}: this 'mean' qfm model is damaged: ValueError: it reads "
                                                     r"crops but its feature spec has none \(n_crops 0\)"):
        predict.load_model(no_crops)  # named with its file when loaded, not at the first image


@pytest.mark.parametrize("side", ["-1", "31"])
def test_a_max_side_no_image_could_be_scored_at_gets_predicts_usage(capsys, side):
    with pytest.raises(SystemExit) as stop:
        cli_main(["predict", "x.png", "--max-side", side])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "usage: qfm predict" in err
    assert f"--max-side must be 0 (native resolution) or at least 32 pixels, got {side}" in err
