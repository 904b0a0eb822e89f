import numpy as np
import pytest

from qfm_lib import params as P
from qfm_lib.analysis import distance_quality_stats, nearest_neighbours
from qfm_lib.pairs import KINDS, count_grid, mine_pairs


def _toy():
    # two semantic clusters (x far apart), quality independent of cluster
    x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    mos = np.array([10.0, 90.0, 50.0, 10.5, 89.0, 20.0])
    return x, mos, [f"im{i}" for i in range(6)]


def test_mined_pairs_have_the_promised_properties():
    x, mos, names = _toy()
    table = mine_pairs(x, mos, names, dist_low=0.2, dist_high=0.6, gap_low=0.2, gap_high=0.8)
    noise = table[table.kind == KINDS[0]]
    contrast = table[table.kind == KINDS[1]]
    assert {("im0", "im3"), ("im1", "im4")} <= set(zip(noise.image_a, noise.image_b))
    assert (noise.distance > 9).all() and (noise.gap <= 2).all()
    assert ("im0", "im1") in set(zip(contrast.image_a, contrast.image_b))
    assert (contrast.distance < 0.5).all() and (contrast.gap >= 40).all()


def test_count_grid_is_monotone_in_thresholds():
    rng = np.random.default_rng(0)
    x, mos = rng.normal(size=(60, 4)), rng.uniform(0, 100, 60)
    grid = count_grid(x, mos, [0.95, 0.9, 0.8], [0.05, 0.1, 0.2])
    assert (np.diff(grid.to_numpy(), axis=0) >= 0).all() and (np.diff(grid.to_numpy(), axis=1) >= 0).all()
    with pytest.raises(ValueError, match="quantile in 0..1"):
        mine_pairs(x, mos, list(range(60)), gap_low=1.2)
    with pytest.raises(ValueError, match="kind must be"):
        count_grid(x, mos, [0.9], [0.1], kind="other")


def test_nearest_neighbours_and_their_quality_gaps():
    x, mos, _ = _toy()
    assert list(nearest_neighbours(x)) == [1, 0, 1, 4, 3, 4]
    stats = distance_quality_stats(x, mos, np.full(6, 75.0))
    assert stats["dim"] == 1 and stats["nn_gap_mean"] == pytest.approx((80 + 80 + 40 + 78.5 + 78.5 + 69) / 6)
    assert stats["share_nn_gap_gt_std"] == pytest.approx(4 / 6)  # gaps 80, 80, 78.5, 78.5 exceed 75


def test_params_validation_messages():
    schema = {"n": P.positive_int, "q": P.fraction, "stage": P.one_of("head", "all"), "qs": P.list_of(P.fraction)}
    ok = {"n": 3, "q": 0.5, "stage": "head", "qs": [0.1], "np": np, "In": [], "_hidden": 1}
    assert P.validate(ok, schema) == {"n": 3, "q": 0.5, "stage": "head", "qs": [0.1]}
    bad = {"n": -2, "q": 1.5, "stage": "neck", "qs": [0.1, 2], "extra": 1}
    with pytest.raises(P.ParameterError) as err:
        P.validate(bad, schema)
    message = str(err.value)
    for part in ["unknown parameter 'extra'", "n must be a positive integer, got -2", "q must be a number in 0..1",
                 "stage must be one of ['head', 'all'], got 'neck'", "qs[1] must be a number in 0..1"]:
        assert part in message
    with pytest.raises(P.ParameterError, match="'q' is not set"):
        P.validate({"n": 1, "stage": "all", "qs": [0.1]}, schema)


def test_params_that_name_datasets_backbones_folders_settings_and_splits(tmp_path):
    assert P.dataset_name("dataset", "livec") is None
    assert "known dataset" in P.dataset_name("dataset", "foo")
    assert P.backbone_name("backbone", "tf_efficientnet_lite0") is None
    assert "timm model name" in P.backbone_name("backbone", "resnet9000")
    assert P.writable_folder("model_dir", str(tmp_path / "new" / "models")) is None  # can be created
    (tmp_path / "file").write_text("x")
    assert "is a file" in P.writable_folder("model_dir", str(tmp_path / "file"))
    assert "cannot write into" in P.writable_folder("model_dir", str(tmp_path / "file" / "below"))
    assert P.setting_grid("tune_grid", {"window": [5, 7]}) is None
    assert "'nope' is not a decoder setting" in P.setting_grid("tune_grid", {"nope": [1]})
    P.check_splits("livec", 10, curve_split=9)
    with pytest.raises(P.ParameterError, match=r"n_splits 11 exceeds the 10 splits committed in .*livec.csv"):
        P.check_splits("livec", 11)
    with pytest.raises(P.ParameterError, match="curve_split 3 must be < 3, the number of splits run"):
        P.check_splits("livec", 3, curve_split=3)
    with pytest.raises(P.ParameterError, match="no committed split file"):
        P.check_splits("koniq10k", 1)


def test_params_of_the_wrong_kind_are_named_not_raised():
    """Each of these passed, or raised an error that named no parameter, before."""
    assert "known dataset" in P.dataset_name("dataset", ["livec"])  # was TypeError: unhashable type
    assert "timm model name" in P.backbone_name("backbone", {"name": "x"})
    assert P.setting_grid("tune_grid", {"dim": [64, 128]}) is None
    assert "tune_grid: the setting {'dim': 'abc'} is not usable (DecoderConfig: dim must be a whole number" in \
        P.setting_grid("tune_grid", {"dim": [64, "abc"]})
    assert P.setting_grid("tune_grid", {"dim": [96, 192], "heads": [3, 6]}) is None  # each pair divides
    assert "the setting {'dim': 128, 'heads': 3} is not usable" in P.setting_grid("tune_grid", {"dim": [128], "heads": [3]})
    assert "must be a finite positive number, got inf" in P.positive_float("noise_sd", float("inf"))
    assert "must be a finite number >= 0, got nan" in P.nonneg_float("alpha", float("nan"))
    assert "must be one of [1, 2], got True" in P.one_of(1, 2)("levels", True)
    assert P.one_of(1, 2)("levels", 2) is None and P.one_of(True, False)("flag", np.bool_(False)) is None
    P.check_splits("livec", 3, committed={"tune_splits[0]": 9})  # the search may read any committed split
    with pytest.raises(P.ParameterError, match=r"tune_splits\[1\] 12 must be < 10, the number of splits committed"):
        P.check_splits("livec", 3, committed={"tune_splits[0]": 0, "tune_splits[1]": 12})
    with pytest.raises(P.ParameterError, match="curve_split -1 must be >= 0"):
        P.check_splits("livec", 3, curve_split=-1)


def test_knn_quality_reads_train_and_validation_only():
    import pandas as pd

    from qfm_lib.analysis import knn_quality_by_stage
    from qfm_lib.features import Features
    from qfm_lib.splits import make_splits

    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, 60)
    feats = Features([f"i{i}" for i in range(60)], ["a", "b"], [2, 1],
                     full=np.c_[mos[:, None] + rng.normal(0, 5, (60, 1)), rng.normal(size=(60, 5))])
    splits = make_splits(feats.names)
    table = knn_quality_by_stage(feats, mos, splits, k=5, n_splits=3)
    assert list(table.stage.unique()) == ["a", "b", "all"] and len(table) == 9
    assert table[table.stage == "a"].val_srcc.min() > 0.5  # stage a holds a noisy copy of the MOS
    for s in range(3):  # other MOS on a split's test part: the same rows for that split
        other = mos.copy()
        test = (splits[f"split_{s}"] == "test").to_numpy()
        other[test] = rng.uniform(0, 100, test.sum())
        again = knn_quality_by_stage(feats, other, splits, k=5, n_splits=3)
        pd.testing.assert_frame_equal(table[table.split == s], again[again.split == s])
