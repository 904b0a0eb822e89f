"""Token decoder, QFM-IQM on tokens and local-manifold windows, on small synthetic token maps."""
import pickle
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats
import torch

from qfm_lib.decoder import DecoderConfig, QualityDecoder, TrainedDecoder, fit_decoder, table_dtype
from qfm_lib.local_manifold import anchored_contrast, fit_manifold_decoder, window_chooser, window_mass
from qfm_lib.metrics import srcc
from qfm_lib.qfm_iqm import draw_candidates, fit_qfm_decoder, matching_partners, window_teacher_views
from qfm_lib.tokens import TokenSet

FAST = DecoderConfig(dim=16, heads=2, gate_hidden=8, window=3, eval_grid=2, max_epochs=12, patience=12,
                     batch_images=16)


def _tokens(n=120, grid=6, channels=12, seed=0, signal=True):
    """Token maps whose channel 0 carries the label in every cell (plus noise)."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(10, 90, n)
    t = rng.normal(size=(n, grid, grid, channels)).astype(np.float32)
    if signal:
        t[..., 0] += ((y - 50) / 20)[:, None, None]
    return TokenSet(t.reshape(-1, channels).astype(np.float16), np.full((n, 2), grid)), y


def _parts(n, seed=0):
    order = np.random.default_rng(seed).permutation(n)
    return {"train": order[: int(0.6 * n)], "val": order[int(0.6 * n): int(0.8 * n)], "test": order[int(0.8 * n):]}


def test_windows_shapes_normalisation_and_errors():
    tokens, _ = _tokens(n=10)
    tokens.fit_normalisation(np.arange(10))
    x = tokens.windows(np.array([0, 1]), np.array([0, 3]), np.array([1, 2]), 3)
    assert x.shape == (2, 9, 12) and x.dtype == torch.float32
    whole = tokens.windows(np.arange(10), None, None, 0)
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05
    assert tokens.grid_positions(0, 3, 2) == [(0, 0), (0, 3), (3, 0), (3, 3)]
    # a window's cells are the map's cells: image 1, rows 3-5, cols 2-4
    raw = np.asarray(tokens.tokens, np.float32).reshape(10, 6, 6, 12)[1, 3:6, 2:5].reshape(9, 12)
    np.testing.assert_allclose(x[1].numpy() * tokens.std + tokens.mean, raw, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="tokens must be"):
        TokenSet(np.zeros((10, 4), np.float16), np.array([[3, 3]]))
    small = TokenSet(np.zeros((48, 4), np.float16), np.array([[6, 6], [2, 6]]), ["a.jpg", "tiny.png"])
    with pytest.raises(ValueError, match="tiny.png has a 2x6 token grid, smaller than the 3x3 window"):
        small.check_window(np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="a.jpg is 6x6, tiny.png is 2x6; use a window no larger than the smallest grid .2"):
        small.windows(np.array([0, 1]), None, None, 0)
    with pytest.raises(ValueError, match="a.jpg is 6x6, tiny.png is 2x6"):
        small.check_window(np.array([0, 1]), 0)  # before any training: fit_decoder checks its rows first
    small.check_window(np.array([0]), 0)
    with pytest.raises(ValueError, match="anchor"):
        DecoderConfig(anchor="somewhere")
    with pytest.raises(ValueError, match="eval_grid=-1"):
        DecoderConfig(eval_grid=-1)


@pytest.mark.parametrize("side,window", [(16, 7), (16, 5), (16, 8), (13, 7), (7, 7), (9, 2), (16, 9)])
def test_covering_grid_reads_every_cell_with_fewest_windows(side, window):
    tokens = TokenSet(np.zeros((side * (side + 3), 2), np.float16), np.array([[side, side + 3]]))
    pos = tokens.grid_positions(0, window)
    read = np.zeros((side, side + 3), bool)
    for t, l in pos:
        read[t:t + window, l:l + window] = True
    assert read.all()
    tops, lefts = sorted({t for t, _ in pos}), sorted({l for _, l in pos})
    assert len(tops) == int(np.ceil(side / window)) and len(lefts) == int(np.ceil((side + 3) / window))
    assert tops[0] == 0 and tops[-1] == side - window
    rows, t, l = tokens.grid_windows(np.array([0, 0]), window)  # every window of each image, image after image
    assert rows.tolist() == [0] * 2 * len(pos) and list(zip(t, l)) == pos * 2


def test_mixed_grids():
    rng = np.random.default_rng(0)
    grid = np.array([[6, 6], [5, 8], [6, 6]])
    tokens = TokenSet(rng.normal(size=(int(grid.prod(1).sum()), 10)).astype(np.float16), grid, ["a", "b", "c"])
    x = tokens.windows(np.array([1]), np.array([2]), np.array([5]), 3)
    flat = np.asarray(tokens.tokens, np.float32)[36:76].reshape(5, 8, 10)[2:5, 5:8].reshape(9, 10)
    np.testing.assert_allclose(x[0].numpy(), flat, rtol=1e-3)
    with pytest.raises(ValueError, match="different token grids cannot form one batch: a is 6x6, b is 5x8"):
        tokens.windows(np.array([0, 1]), None, None, 0)


@pytest.mark.parametrize("gated,kept", [(False, False), (False, True), (True, False)])
def test_window_scores_are_each_windows_forward_pass(gated, kept):
    rng = np.random.default_rng(0)
    grid = np.array([[6, 6], [5, 8], [7, 6], [6, 6]] * 5)
    tokens = TokenSet(rng.normal(size=(int(grid.prod(1).sum()), 10)).astype(np.float16), grid)
    cfg = replace(FAST, gated=gated)
    model = QualityDecoder(tokens.channels, cfg).eval()
    if gated:
        torch.nn.init.normal_(model.gate[2].weight)
    tokens.fit_normalisation(np.arange(len(grid)))
    if kept:
        tokens.keep_normalised(table_dtype(cfg))
    trained = TrainedDecoder(model, tokens.mean, tokens.std, 50.0, 10.0, cfg, 0)
    rows = np.array([3, 1, 0, 2, 5, 19, 6])
    got = trained.window_scores(tokens, rows, chunk=8)  # ungated: 2 images per part
    for i, r in enumerate(rows):
        pos = np.array(tokens.grid_positions(r, 3, 2))
        with torch.no_grad():
            direct = model(tokens.windows(np.full(len(pos), r), pos[:, 0], pos[:, 1], 3, table_dtype(cfg)))[0].numpy()
        np.testing.assert_allclose(got[i, :len(pos)], direct * 10 + 50, rtol=1e-4, atol=1e-3)


def test_decoder_learns_and_is_deterministic():
    tokens, y = _tokens()
    parts = _parts(len(y))
    a = fit_decoder(tokens, y, parts["train"], parts["val"], FAST)
    b = fit_decoder(tokens, y, parts["train"], parts["val"], FAST)
    pa, pb = a.predict(tokens, parts["test"]), b.predict(tokens, parts["test"])
    np.testing.assert_array_equal(pa, pb)
    assert srcc(pa, y[parts["test"]]) > 0.8
    again = TrainedDecoder.from_state(a.state())
    np.testing.assert_allclose(again.predict(tokens, parts["test"]), pa, rtol=1e-5)
    assert a.gate_values(tokens, parts["test"][:3]).shape == (3, 12)
    other, _ = _tokens(channels=10)
    with pytest.raises(ValueError, match="these token maps have 10 channels per cell, this model was trained on 12"):
        a.predict(other, parts["test"])


def test_gate_values_average_the_gates_of_the_evaluation_windows():
    tokens, y = _tokens(n=60)
    parts = _parts(len(y))
    cfg = replace(FAST, max_epochs=3, patience=3, eval_grid=0)  # covering windows: 4 on 6x6, 6 on 5x8, 9 on 7x7
    trained = fit_decoder(tokens, y, parts["train"], parts["val"], cfg)
    rows = parts["test"][:4]
    whole = trained.model.gate_values(trained.view(tokens).windows(rows, None, None, 0, table_dtype(cfg))).detach()
    assert np.abs(trained.gate_values(tokens, rows) - whole.numpy()).max() > 1e-4  # the gate is not linear
    rng = np.random.default_rng(1)
    grid = np.array([[6, 6], [5, 8], [7, 7], [6, 6]])
    mixed = TokenSet(rng.normal(size=(int(grid.prod(1).sum()), tokens.channels)).astype(np.float16), grid)
    rows = np.array([2, 0, 1, 3, 1])
    got = trained.gate_values(mixed, rows)
    model, dtype = trained.model, table_dtype(cfg)
    for i, r in enumerate(rows):
        pos = np.array(mixed.grid_positions(r, 3))
        per_window = model.gate_values(mixed.windows(np.full(len(pos), r), pos[:, 0], pos[:, 1], 3, dtype))
        np.testing.assert_allclose(got[i], per_window.detach().double().mean(0).numpy(), rtol=1e-6)


def test_qfm_adversarial_matching_and_eps_on_validation():
    tokens, y = _tokens()
    x_pooled = np.asarray(tokens.tokens, np.float32).reshape(len(y), -1, tokens.channels).mean(1)
    parts = _parts(len(y))
    cfg = replace(FAST, adv_weight=1.0)
    partners = matching_partners(x_pooled, y, parts["train"], cfg)
    train = set(parts["train"].tolist())
    assert set(partners) == train and all(set(p.tolist()) <= train for p in partners.values())
    gaps = [abs(y[r] - y[p]).mean() for r, p in partners.items() if len(p)]
    assert np.median(gaps) < np.median(np.abs(y[:, None] - y[None, :]))  # similar quality
    model = fit_qfm_decoder(tokens, y, x_pooled, parts, cfg, eps_grid=(0.1, 0.3))
    assert model.config.adv_eps in (0.1, 0.3)
    assert srcc(model.predict(tokens, parts["test"]), y[parts["test"]]) > 0.7


def test_adversarial_candidates_are_distinct_partners_where_there_are_enough():
    partners = {0: np.array([5, 6]), 1: np.array([7]), 2: np.arange(10, 16)}
    rows = np.array([0, 1, 2] * 50)
    cands = draw_candidates(partners, rows, 2, np.random.default_rng(0)).reshape(2, -1)  # candidate-major
    for r, (a, b) in zip(rows, cands.T):
        assert {a, b} <= set(partners[r].tolist())
        assert (a != b) == (r != 1)  # a row with one partner repeats it; the others never draw one twice


def test_normalisation_statistics_are_those_of_the_training_cells():
    rng = np.random.default_rng(0)
    grid = rng.integers(1, 6, (70, 2))  # grids of every size, pooled from per-image statistics
    tokens = TokenSet(rng.normal(3, 2, (grid.prod(1).sum(), 5)).astype(np.float16), grid)
    rows = np.array([69, 0, 33, 31, 32, 5])
    cells = np.concatenate([np.asarray(tokens.tokens[tokens.offsets[r]:tokens.offsets[r] + grid[r].prod()],
                                       dtype=np.float64) for r in rows])
    tokens.fit_normalisation(rows)
    np.testing.assert_allclose(tokens.mean, cells.mean(0), rtol=1e-6)
    np.testing.assert_allclose(tokens.std, cells.std(0), rtol=1e-5)


def test_teacher_labels_are_out_of_fold():
    """Tokens that carry no signal: an in-sample teacher would reproduce the labels, an
    out-of-fold one cannot."""
    tokens, y = _tokens(n=60, channels=64, signal=False)
    train = np.arange(60)
    tokens.fit_normalisation(train)
    rows, tops, lefts, labels = window_teacher_views(tokens, y, train, FAST)
    assert len(rows) == 60 * 4 and set(rows.tolist()) == set(train.tolist())
    assert abs(np.corrcoef(labels, y[rows])[0, 1]) < 0.5


def test_window_mass_and_salient_anchor_first():
    rng = np.random.default_rng(0)
    cells = rng.random((3, 6, 6))
    tops, lefts = rng.integers(0, 4, (3, 5)), rng.integers(0, 4, (3, 5))
    brute = np.array([[cells[b, t:t + 3, l:l + 3].mean() for t, l in zip(tops[b], lefts[b])] for b in range(3)])
    np.testing.assert_allclose(window_mass(cells, tops, lefts, 3), brute)
    tokens, _ = _tokens(n=3)
    cfg = replace(FAST, n_windows=4, anchor="spectral", contrastive_weight=0.2)
    t, l = window_chooser(cfg, cells)(None, tokens, np.arange(3), np.random.default_rng(1))
    mass = window_mass(cells, t, l, 3)
    assert (mass[:, 0] >= mass.max(1) - 1e-12).all()
    # without the contrast there is no anchor: the windows keep their random draw (same draws)
    t0, l0 = window_chooser(replace(cfg, contrastive_weight=0.0), cells)(None, tokens, np.arange(3),
                                                                        np.random.default_rng(1))
    assert sorted(zip(t0.ravel(), l0.ravel())) == sorted(zip(t.ravel(), l.ravel()))


def test_learned_anchor_passes_on_the_teachers_pass_over_its_windows():
    tokens, _ = _tokens(n=4)
    tokens.fit_normalisation(np.arange(4))
    cfg = replace(FAST, n_windows=3, contrastive_weight=0.2, ema=True)
    teacher = QualityDecoder(tokens.channels, cfg)
    torch.nn.init.normal_(teacher.gate[2].weight)  # a gate that is not the identity
    rows = np.arange(4)
    tops, lefts, handed, (score, query) = window_chooser(cfg)(teacher, tokens, rows, np.random.default_rng(0))
    x = tokens.windows(np.repeat(rows, 3), tops.ravel(), lefts.ravel(), 3, table_dtype(cfg))
    assert torch.equal(handed, x)  # the windows' tokens, in the chosen order
    with torch.no_grad():
        direct_score, direct_query = teacher.eval()(x)
        mass = teacher.token_logits(x).mean(1).view(4, 3)
    torch.testing.assert_close(score, direct_score.view(4, 3), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(query, direct_query.view(4, 3, -1), rtol=1e-4, atol=1e-5)
    assert (mass[:, 0] >= mass.max(1).values - 1e-6).all()  # the anchor first


def test_anchored_contrast_prefers_clustered_images():
    b, k, p = 4, 3, 8
    centres = torch.nn.functional.normalize(torch.randn(b, 1, p), dim=-1)
    tight = torch.nn.functional.normalize(centres + 0.05 * torch.randn(b, k, p), dim=-1)
    mixed = torch.nn.functional.normalize(torch.randn(b, k, p), dim=-1)
    good = sum(anchored_contrast(tight, tight, 0.2, 1.0))
    bad = sum(anchored_contrast(mixed, mixed, 0.2, 1.0))
    assert good < bad
    # without intra-class negatives the anchor term ignores the image's own other windows
    c0, a0 = anchored_contrast(tight, tight, 0.2, 0.0)
    c1, a1 = anchored_contrast(tight, tight, 0.2, 1.0)
    assert torch.isclose(c0, c1) and a0 < a1


@pytest.mark.parametrize("anchor", ["learned", "spectral", "random"])
def test_local_manifold_variants_train(anchor):
    tokens, y = _tokens()
    parts = _parts(len(y))
    cells = np.random.default_rng(0).random((len(y), 6, 6))
    cfg = replace(FAST, gated=False, n_windows=3, contrastive_weight=0.2, mutual_weight=0.5, ema=True,
                  anchor=anchor, ema_decay=0.9)
    model = fit_manifold_decoder(tokens, y, parts, cfg, cells)
    assert srcc(model.predict(tokens, parts["test"]), y[parts["test"]]) > 0.6


def test_windows_do_not_depend_on_a_kept_table():
    tokens, _ = _tokens(n=6)
    tokens.fit_normalisation(np.arange(4))
    rows, tops, lefts = np.array([0, 5, 2]), np.array([0, 1, 2]), np.array([1, 0, 2])
    direct = tokens.windows(rows, tops, lefts, 3)
    direct_bf16 = tokens.windows(rows, tops, lefts, 3, torch.bfloat16)
    assert direct.dtype == torch.float32 and torch.equal(direct_bf16, direct.bfloat16())
    np.testing.assert_array_equal(tokens.keep_normalised(torch.float32).windows(rows, tops, lefts, 3), direct)
    tokens.keep_normalised(torch.bfloat16)
    assert tokens._kept(torch.bfloat16) is not None and tokens._kept(torch.float32) is None
    bf16 = tokens.windows(rows, tops, lefts, 3, torch.bfloat16)  # read from the table
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, direct_bf16)
    assert torch.equal(tokens.windows(rows, tops, lefts, 3), direct)  # float32 callers: exact, not the table
    maps = tokens.image_maps(rows, torch.bfloat16)
    assert maps[0].data_ptr() == tokens._table.data_ptr()  # image 0's map: a view of the table
    for kept, exact in zip(maps, tokens.image_maps(rows)):
        assert torch.equal(kept, exact.bfloat16())
    tokens.fit_normalisation(np.arange(2, 6))  # new statistics: the table no longer applies
    fresh = tokens.windows(rows, tops, lefts, 3)
    assert tokens._kept(torch.bfloat16) is None and not torch.allclose(fresh, direct, atol=1e-3)
    assert pickle.loads(pickle.dumps(tokens))._table is None  # workers get the tokens, not the table
    # one table per process: a second token set keeping its own takes it, and the first reads directly
    first = tokens.keep_normalised(torch.float32)
    other, _ = _tokens(n=6, seed=1)
    other.fit_normalisation(np.arange(6)).keep_normalised(torch.float32)
    assert first._table is None and other._table is not None
    np.testing.assert_array_equal(first.windows(rows, tops, lefts, 3), fresh)
    assert torch.equal(other.windows(rows, tops, lefts, 3), other._table[
        torch.from_numpy(other.cell_index(rows, tops, lefts, 3).ravel())].view(3, 9, -1))
    first.keep_normalised(torch.float32)  # takes it back, refilled with its own statistics
    assert other._table is None and torch.equal(first.windows(rows, tops, lefts, 3), fresh)


def test_window_means_are_the_mean_of_the_normalised_window():
    tokens, _ = _tokens(n=5)
    tokens.fit_normalisation(np.arange(3))
    rows, tops, lefts = np.array([4, 0, 4, 2, 0]), np.array([0, 1, 3, 2, 0]), np.array([1, 0, 3, 2, 3])
    expected = tokens.windows(rows, tops, lefts, 3).double().mean(1).numpy()
    np.testing.assert_allclose(tokens.window_means(rows, tops, lefts, 3), expected, rtol=1e-5, atol=1e-6)
    whole = tokens.windows(np.array([3]), None, None, 0).double().mean(1).numpy()
    np.testing.assert_allclose(tokens.window_means(np.array([3]), None, None, 0), whole, rtol=1e-5, atol=1e-6)
    assert tokens.window_means(np.array([], int), np.array([], int), np.array([], int), 3).shape == (0, tokens.channels)


def test_precision_is_fp32_when_asked_or_unsupported(monkeypatch):
    from qfm_lib import decoder as D

    assert D.precision(replace(FAST, bf16=False)) == "fp32"
    monkeypatch.setattr(D, "_cpu_has_bf16", lambda: False)
    assert D.precision(FAST) == "fp32" and D.table_dtype(FAST) == torch.float32
    monkeypatch.setattr(D, "_cpu_has_bf16", lambda: True)
    assert D.precision(FAST) == "bf16" and D.table_dtype(FAST) == torch.bfloat16


@pytest.mark.parametrize("bad", [{"max_epochs": 0}, {"patience": -1}, {"batch_images": 0}, {"lr": -1e-3},
                                 {"lr": float("nan")}, {"weight_decay": -1.0}, {"dropout": 1.0}, {"max_epochs": 2.5},
                                 {"lr": "1e-3"}, {"dropout": "0.1"}, {"max_epochs": True}, {"lr": True},
                                 {"dropout": False}, {"seed": -1}, {"seed": 1.5}])
def test_training_settings_no_training_can_run_with_are_refused_by_name(bad):
    from qfm_lib.manifold import ManifoldConfig
    from qfm_lib.models import TrainConfig

    (name, value), = bad.items()
    for config in (DecoderConfig, TrainConfig, ManifoldConfig):
        field = "batch_size" if name == "batch_images" and config is TrainConfig else name  # TrainConfig's name
        with pytest.raises(ValueError, match=f"{config.__name__}: {field} must be"):
            config(**{field: value})


@pytest.mark.parametrize("bad, says", [({"dim": "abc"}, "dim must be a whole number, got 'abc'"),
                                       ({"gated": 1}, "gated must be True or False, got 1"),
                                       ({"adv_eps": "0.3"}, "adv_eps must be a number, got '0.3'"),
                                       ({"anchor": None}, "anchor must be text, got None")])
def test_a_setting_of_the_wrong_kind_is_refused_by_name(bad, says):
    """Before, dim='abc' failed in a '%' with 'not all arguments converted during string formatting'."""
    with pytest.raises(ValueError, match=f"DecoderConfig: {says}"):
        DecoderConfig(**bad)
    assert DecoderConfig(dim=np.int64(64), adv_eps=1, gated=np.bool_(False)).dim == 64  # numpy and int are fine


def test_a_training_that_never_scores_a_finite_validation_says_so():
    tokens, y = _tokens(n=40)
    parts = _parts(len(y))
    y = y.copy()
    y[parts["val"]] = 50.0  # constant validation labels: every correlation is NaN
    with pytest.raises(FloatingPointError, match="no epoch of 2 gave a finite validation score"), \
            pytest.warns(stats.ConstantInputWarning):  # scipy's word for the same cause, at every epoch
        fit_decoder(tokens, y, parts["train"], parts["val"], replace(FAST, max_epochs=2, patience=2))
