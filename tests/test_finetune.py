"""End-to-end fine-tuning (the GPU option), checked on the CPU on a few real LIVEC images."""
import numpy as np
import pytest
import torch

from qfm_lib.backbones import load_backbone
from qfm_lib.finetune import FinetuneConfig, FinetunedDecoder, finetune_split, finetune_study, load_images

N_IMAGES = 40  # split 0 of this subset: 25 train, 7 validation, 8 test images


@pytest.fixture
def on_data_root(data_root, monkeypatch):
    monkeypatch.setenv("QFM_DATA_ROOT", str(data_root))


@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"lr": float("nan")}, {"max_epochs": 0}, {"patience": -1},
                                 {"batch_images": 0}, {"seed": -1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)


def test_config_names_a_device_it_cannot_use():
    with pytest.raises(ValueError, match="'gpu' is not a torch device"):
        FinetuneConfig(device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="finds no CUDA GPU; use --device cpu"):
            FinetuneConfig(device="cuda")
    with pytest.raises(ValueError, match="'meta': fine-tuning runs on cpu or cuda"):
        FinetuneConfig(device="meta")


def test_start_must_have_a_token_decoder(on_data_root):
    with pytest.raises(ValueError, match="ridge"):
        finetune_study("livec", "tf_efficientnet_lite0", [0], FinetuneConfig(start="ridge", device="cpu"),
                       n_images=N_IMAGES, progress=False)


def test_cli_names_an_unknown_split(on_data_root, capsys):
    from qfm_lib.cli import main

    assert main(["finetune", "--splits", "0", "12", "--n-images", str(N_IMAGES), "--device", "cpu"]) == 2
    assert "splits [12] are not in data/splits/livec.csv" in capsys.readouterr().err


def test_cli_rejects_a_bad_rate_in_the_grid(on_data_root, capsys):
    from qfm_lib.cli import main

    assert main(["finetune", "--splits", "0", "--n-images", str(N_IMAGES), "--device", "cpu",
                 "--lr-grid", "1e-5", "-1"]) == 2
    assert "FinetuneConfig: lr must be a finite number >= 0, got -1.0" in capsys.readouterr().err


def test_cli_refuses_before_training_what_it_could_not_finish(on_data_root, capsys, tmp_path, monkeypatch):
    import qfm_lib.finetune as finetune
    from qfm_lib.cli import main

    monkeypatch.setattr(finetune, "finetune_study", lambda *a, **k: pytest.fail("trained although it would fail"))
    (tmp_path / "afile").write_text("")
    base = ["finetune", "--splits", "0", "--device", "cpu"]
    assert main(base + ["--output-dir", str(tmp_path / "afile")]) == 2
    assert f"cannot write to --output-dir {tmp_path / 'afile'} (it is a file); nothing was trained" in capsys.readouterr().err
    assert main(base + ["--output-dir", str(tmp_path / "afile" / "sub")]) == 2
    assert f"({tmp_path / 'afile'} is a file); nothing was trained" in capsys.readouterr().err
    assert main(base + ["--n-images", "0"]) == 2
    assert "--n-images must be a whole number >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--amp", "flase"])
    assert "expected true or false (yes/no, 1/0), got 'flase'" in capsys.readouterr().err


def test_cli_gives_the_remedy_for_weights_it_cannot_find(capsys, monkeypatch):
    import qfm_lib.finetune as finetune
    from qfm_lib.backbones import WeightsUnavailableError
    from qfm_lib.cli import main

    def unavailable(*args, **kwargs):  # what load_backbone raises without a model hub (46 s of retries)
        raise WeightsUnavailableError("no weights for 'tf_efficientnet_b0'; use one of [...]")

    monkeypatch.setattr(finetune, "finetune_study", unavailable)
    assert main(["finetune", "--splits", "0", "--device", "cpu", "--backbone", "tf_efficientnet_b0"]) == 2
    assert "qfm finetune: no weights for 'tf_efficientnet_b0'; use one of" in capsys.readouterr().err


def test_a_split_given_twice_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"splits \[0\] are given more than once"):
        finetune_study("livec", "tf_efficientnet_lite0", [0, 1, 0], FinetuneConfig(device="cpu"), progress=False)


def test_cli_keeps_the_rows_of_the_splits_done_and_names_each_run_apart(capsys, monkeypatch, tmp_path):
    """A failure at split 2 (e.g. out of GPU memory) keeps splits 0 and 1; runs of other settings
    (here --n-images) write other files."""
    import pandas as pd

    import qfm_lib.finetune as finetune
    from qfm_lib.cli import main

    def fails_at_the_third_split(dataset, backbone, splits, cfg, n_images=None, score_test=True, lr_grid=(),
                                 on_split=None):
        rows = []
        for split in splits[:2]:
            rows.append({"variant": "start, fine-tuned", "split": split, "plcc": 0.9})
            on_split(pd.DataFrame(rows))
        raise FloatingPointError("split 2: the weights diverged")

    monkeypatch.setattr(finetune, "finetune_study", fails_at_the_third_split)
    base = ["finetune", "--splits", "0", "1", "2", "--device", "cpu", "--output-dir", str(tmp_path)]
    assert main(base) == 2
    (kept,) = tmp_path.glob("*_rows.partial.csv")
    assert f"split 2: the weights diverged; the rows of the splits done are in {kept}" in capsys.readouterr().err
    assert list(pd.read_csv(kept)["split"]) == [0, 1]
    assert main(base + ["--n-images", "40"]) == 2
    assert len(list(tmp_path.glob("*_rows.partial.csv"))) == 2 and kept.is_file()  # the first run's rows untouched
    capsys.readouterr()

    def fails_at_once(*args, **kwargs):
        raise FloatingPointError("split 0: the weights diverged")

    monkeypatch.setattr(finetune, "finetune_study", fails_at_once)
    assert main(base) == 2
    assert "the rows of the splits done" not in capsys.readouterr().err  # not the earlier run's file

    def succeeds(dataset, backbone, splits, cfg, n_images=None, score_test=True, lr_grid=(), on_split=None):
        rows = pd.DataFrame({"variant": "v", "split": [0, 1, 2], "plcc": 0.9, "srcc": 0.8, "val_score": 0.7,
                             "fit_seconds": 1.0})
        on_split(rows)
        return rows, None

    monkeypatch.setattr(finetune, "finetune_study", succeeds)
    assert main(base) == 0
    assert len(list(tmp_path.glob("*_rows.partial.csv"))) == 1  # the first run's partial rows are gone, as its rows are whole
    (whole,) = tmp_path.glob("*_rows.csv")
    assert whole.name == kept.name.replace(".partial", "") and len(pd.read_csv(whole)) == 3


def test_lr_grid_keeps_the_rate_validation_prefers_and_scores_test_once(monkeypatch):
    """Each rate of the grid is fitted; the one whose kept weights score highest on validation (the
    first of a tie) is kept, and only its model scores the test part."""
    from qfm_lib import finetune

    val_scores = {1e-5: 0.80, 3e-5: 0.83, 1e-4: 0.83}
    fitted, scored = [], []

    def fake_fit(start, backbone, images, y, parts, cfg, progress):
        fitted.append(cfg.lr)
        return f"model at {cfg.lr:g}", {"val_score": val_scores[cfg.lr], "val_plcc": 0.0, "val_srcc": 0.0,
                                        "best_epoch": 0, "fit_seconds": 1.5, "val_by_epoch": []}

    def fake_predict(model, start, images, rows, cfg):
        scored.append(model)
        return y[rows] + np.sin(rows)

    monkeypatch.setattr(finetune, "_fit_split", fake_fit)
    monkeypatch.setattr(finetune, "predict", fake_predict)
    y = np.linspace(5.0, 95.0, 30)
    parts = {"train": np.arange(15), "val": np.arange(15, 20), "test": np.arange(20, 30)}
    cfg = FinetuneConfig(device="cpu")
    row = finetune_split(None, None, None, y, parts, cfg, progress=False, lr_grid=tuple(val_scores))
    assert fitted == list(val_scores) and scored == ["model at 3e-05"]
    assert row["lr"] == 3e-5 and row["val_score"] == 0.83 and row["val_by_lr"] == val_scores
    assert row["fit_seconds"] == 4.5 and np.isfinite(row["plcc"])

    fitted.clear(), scored.clear()
    row = finetune_split(None, None, None, y, parts, cfg, progress=False)  # no grid: cfg.lr
    assert fitted == [cfg.lr] and row["lr"] == cfg.lr and "val_by_lr" not in row


@pytest.mark.slow
def test_fine_tuning_starts_at_the_frozen_model_and_learns(on_data_root, lite0):
    """With lr 0 nothing moves: the fine-tuned row scores the test part as the frozen row does (live token
    maps instead of the cache's), and validation only scores no test part. With a learning rate the backbone's weights change, and only where
    they should: batch-norm statistics stay frozen, and the backbone it was given is untouched."""
    torch.manual_seed(0)
    still = FinetuneConfig(lr=0.0, max_epochs=1, patience=1, batch_images=8, device="cpu")
    rows, comparison = finetune_study("livec", "tf_efficientnet_lite0", [0], still, n_images=N_IMAGES, progress=False)
    frozen, tuned = rows.iloc[0], rows.iloc[1]
    assert tuned["variant"] == f"{still.start}, fine-tuned" and comparison is None
    for metric in ("plcc", "srcc", "val_score"):
        assert tuned[metric] == pytest.approx(frozen[metric], abs=2e-3), metric

    assert tuned["val_by_epoch"][0] == pytest.approx(tuned["val_by_epoch"][1], abs=1e-6)  # lr 0: nothing moved
    # the row's validation score is the kept epoch's (index 0: the start)
    assert tuned["val_score"] == pytest.approx(tuned["val_by_epoch"][int(tuned["best_epoch"]) + 1], abs=1e-4)

    from qfm_lib import protocol, study

    data = study.load_study_data("livec", "tf_efficientnet_lite0", n_images=N_IMAGES)
    inp = protocol.inputs_from_study(data, progress=False)
    start = protocol.trained_model(inp, still.start, 0)
    # a fresh backbone, as finetune_study loads one
    fresh = load_backbone("tf_efficientnet_lite0")
    images = load_images(list(data.table["path"]), fresh, progress=False)
    blind = finetune_split(start, fresh, images, data.mos, inp.parts(0), still, progress=False, score_test=False)
    assert np.isnan(blind["plcc"]) and blind["val_score"] == pytest.approx(tuned["val_score"], abs=1e-6)

    model = FinetunedDecoder(lite0, start)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    x = torch.randn(2, 3, 256, 256)
    cells = model.cells(x)
    loss = model.window_scores(cells, np.array([0, 1]), np.array([1, 0]), start.config.window).square().mean()
    loss.backward()
    opt.step()
    after = model.state_dict()
    assert not torch.equal(before["graph.model.conv_stem.weight"], after["graph.model.conv_stem.weight"])
    assert torch.equal(before["graph.model.bn1.running_mean"], after["graph.model.bn1.running_mean"])
    # the backbone it started from is untouched (the next split starts from it afresh)
    assert torch.equal(lite0.model.conv_stem.weight, before["graph.model.conv_stem.weight"])
    assert not lite0.model.conv_stem.weight.requires_grad
