import numpy as np
import pandas as pd
import pytest
import torch

from qfm_lib.cli import main as cli_main
from qfm_lib.features import FeatureSpec
from qfm_lib.models import QualityModel, TrainConfig, mine_partners, train_fixed_epochs, train_model
from qfm_lib.predict import predict_images, save_model

from .conftest import write_image


def _synthetic(n=160, d=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 50 + 15 * x[:, 0] - 10 * x[:, 1] + rng.normal(0, 2, n)  # quality lives in two channels
    return x, y


def test_gate_is_identity_at_init():
    model = QualityModel(8, TrainConfig())
    x = torch.randn(4, 8)
    assert torch.allclose(model.select(x), x)


def test_training_learns_and_is_deterministic():
    x, y = _synthetic()
    cfg = TrainConfig(max_epochs=40, patience=40, matching_weight=1.0, contrastive_weight=0.5)
    a = train_model(x[:120], y[:120], x[120:], y[120:], cfg)
    b = train_model(x[:120], y[:120], x[120:], y[120:], cfg)
    np.testing.assert_array_equal(a.predict(x[120:]), b.predict(x[120:]))
    assert np.corrcoef(a.predict(x[120:]), y[120:])[0, 1] > 0.8
    assert 0 <= a.best_epoch < 40 and len(a.history) >= a.best_epoch + 1


def test_partners_have_similar_quality_and_distant_features():
    x, y = _synthetic()
    z = (x - x.mean(0)) / x.std(0)
    partners = mine_partners(z, y, gap_quantile=0.05, dist_quantile=0.8)
    gaps = np.abs(y[:, None] - y[None])
    all_gaps = gaps[np.triu_indices(len(y), 1)]
    dists = np.linalg.norm(z[:, None] - z[None], axis=-1)
    far = np.quantile(dists[np.triu_indices(len(y), 1)], 0.8)
    assert sum(map(len, partners)) > 0
    for i, js in enumerate(partners):
        assert i not in js
        assert (gaps[i, js] <= np.quantile(all_gaps, 0.05) + 1e-9).all()
        assert (dists[i, js] >= far * (1 - 1e-4)).all()  # mine_partners measures in float32


def test_final_model_roundtrip_and_predict_cli(tmp_path, lite0, capsys):
    good = [write_image(tmp_path / "imgs" / f"ok{i}.png", size=(96, 80), seed=i) for i in range(3)]
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"garbage")
    from qfm_lib.features import extract_features

    table = pd.DataFrame({"image": [p.name for p in good], "path": [str(p) for p in good],
                          "mos": [20.0, 50.0, 80.0], "sha256": ["0" * 64] * 3})
    feats = extract_features(table, FeatureSpec(), lite0, progress=False)
    trained = train_fixed_epochs(feats.full, table["mos"].to_numpy(), TrainConfig(max_epochs=5), epochs=3)
    path = save_model(trained, tmp_path / "m.pt", lite0.name, lite0.weights_sha256, FeatureSpec(), table)
    scores = predict_images([tmp_path / "imgs"], path)
    assert len(scores) == 4
    broken = scores.set_index("image").loc[str(bad)]
    assert broken["error"].startswith(f"{bad}: cannot decode image") and np.isnan(broken["score"])
    ok = scores[scores.error == ""]
    np.testing.assert_allclose(ok["score"].to_numpy(), trained.predict(feats.full), rtol=1e-4)
    out = tmp_path / "scores.csv"
    assert cli_main(["predict", str(tmp_path / "imgs"), "--model", str(path), "-o", str(out)]) == 1
    assert len(pd.read_csv(out)) == 4
    assert cli_main(["predict", str(good[0]), "--model", str(path), "-o", str(out)]) == 0
    assert cli_main(["predict", str(good[0]), "--model", str(tmp_path / "none.pt")]) == 2
    assert "make figures" in capsys.readouterr().err


def test_brisque_features_cached(livec, monkeypatch):
    from qfm_lib import baselines

    feats = baselines.brisque_features(livec.head(2), progress=False)
    assert feats.shape == (2, 36) and np.isfinite(feats).all()
    monkeypatch.setattr(baselines, "load_rgb", lambda p: pytest.fail("recomputed cached BRISQUE features"))
    np.testing.assert_array_equal(baselines.brisque_features(livec.head(2), progress=False), feats)


def test_summary_median_and_paired_test():
    from qfm_lib.protocol import summarise

    rows = [{"variant": v, "split": s, "plcc": p + s * 0.01, "srcc": p, "krcc": p, "rmse": 1 - p}
            for s in range(10) for v, p in (("ridge", 0.8), ("better", 0.85 + 0.001 * s))]
    table = summarise(pd.DataFrame(rows), "ridge").set_index("variant")
    assert table.loc["ridge", "srcc_median"] == pytest.approx(0.8)
    assert table.loc["better", "srcc_vs_ridge_p"] < 0.01 and np.isnan(table.loc["ridge", "srcc_vs_ridge_p"])


def test_bank_dropout_is_seeded_unbiased_and_off_in_eval():
    from qfm_lib.models import BankDropout

    torch.manual_seed(0)
    a = BankDropout(0.2, 64)
    torch.manual_seed(0)
    b = BankDropout(0.2, 64)
    x = torch.ones(3, 5, 64)
    torch.manual_seed(1)
    out_a = a(x)
    torch.manual_seed(1)
    assert torch.equal(out_a, b(x)) and out_a.shape == x.shape
    assert a.bank.mean().item() == pytest.approx(1.0, abs=0.02) and (a.bank == 0).float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert torch.equal(a.eval()(x), x)


def test_distillation_views_join_training_and_gates_are_reported():
    x, y = _synthetic()
    rng = np.random.default_rng(3)
    x_extra = x[:120] + rng.normal(0, 0.1, (120, x.shape[1]))
    cfg = TrainConfig(max_epochs=10, patience=10, matching_weight=1.0, extra_per_epoch=0.5)
    trained = train_model(x[:120], y[:120], x[120:], y[120:], cfg, x_extra=x_extra, y_extra=y[:120])
    assert np.corrcoef(trained.predict(x[120:]), y[120:])[0, 1] > 0.7
    without = train_model(x[:120], y[:120], x[120:], y[120:], cfg)  # the same run without the extra views
    assert not np.array_equal(trained.predict(x[120:]), without.predict(x[120:]))
    gates = trained.gate_values(x[120:])
    assert gates.shape == (40, x.shape[1]) and ((gates > 0) & (gates < 2)).all()


def test_gate_table_and_column_spearman():
    from scipy import stats

    from qfm_lib.analysis import column_spearman, gate_by_channel
    from qfm_lib.features import Features

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    x[:, 5] = 1.0
    y = x[:, 0] + rng.normal(0, 0.1, 30)
    rho = column_spearman(x, y)
    assert rho[0] == pytest.approx(stats.spearmanr(x[:, 0], y)[0]) and rho[5] == 0
    feats = Features([f"i{i}" for i in range(30)], ["a", "b"], [1, 2])
    table = gate_by_channel(np.full((30, 6), 0.5), x, y, feats)
    assert list(table.stage) == ["a", "a", "b", "b", "b", "b"] and list(table.part) == ["mean", "std", "mean", "mean", "std", "std"]
    assert (table.gate_mean == 0.5).all() and table.abs_srcc_with_mos.iloc[0] > 0.9
