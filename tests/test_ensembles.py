"""Means of registry variants: rows made of their members' own models, cached, outside the protocol's digest."""

import numpy as np
import pytest

from qfm_lib import ensembles, predict, protocol
from qfm_lib.cache import code_files
from qfm_lib.features import one_torch_thread
from qfm_lib.metrics import iqa_metrics
from tests.test_protocol import _inputs

MEAN = "window regression + lmc (mean)"


def test_mean_row_averages_the_models_its_members_rows_trained(fast_variants, monkeypatch):
    inp = _inputs()
    members = ensembles.members(MEAN)
    assert members == ("window regression (EMA)", "lmc")
    row = ensembles.evaluate_mean_row(inp, MEAN, 0)
    test, y = inp.parts(0)["test"], inp.y
    with one_torch_thread():  # as rows are computed
        preds = [protocol.trained_model(inp, members[0], 0).predict(inp.tokens, test),
                 protocol._fit(inp, members[1], 0)[0](test)]
    expected = iqa_metrics((preds[0] + preds[1]) / 2, y[test])
    assert row["plcc"] == pytest.approx(expected["plcc"]) and row["srcc"] == pytest.approx(expected["srcc"])
    own = [protocol.evaluate_row(inp, m, 0) for m in members]
    assert row["settings"] == {m: r["settings"] for m, r in zip(members, own)}
    assert row["fit_seconds"] == pytest.approx(sum(r["fit_seconds"] for r in own), abs=0.02)
    monkeypatch.setattr(ensembles, "_member_scorer", lambda *a: pytest.fail("a cached mean row was recomputed"))
    assert ensembles.evaluate_mean_row(inp, MEAN, 0) == row


def test_evaluate_mixes_means_and_protocol_rows_in_protocol_order(fast_variants):
    inp = _inputs()
    names = ["ridge", MEAN]
    table = ensembles.evaluate(inp, names, n_splits=2, progress=False, n_jobs=1)
    assert list(zip(table.variant, table.split)) == [("ridge", 0), (MEAN, 0), ("ridge", 1), (MEAN, 1)]
    assert table[["plcc", "srcc", "krcc", "rmse", "val_score", "fit_seconds"]].notna().all().all()
    ridge = protocol.evaluate(inp, ["ridge"], n_splits=2, progress=False)
    np.testing.assert_allclose(table[table.variant == "ridge"].plcc, ridge.plcc)


def test_mean_keys_and_bad_names(fast_variants):
    inp = _inputs()
    key = ensembles.mean_row_key(inp, MEAN, 0)
    assert key["members"] == [protocol.row_key(inp, m, 0) for m in ensembles.members(MEAN)]
    assert key != ensembles.mean_row_key(inp, MEAN, 1)
    assert "ensembles.py" not in code_files("protocol")  # adding a mean keeps every cached protocol row
    assert all(m in protocol.VARIANTS for mean in ensembles.MEANS for m in ensembles.members(mean))
    assert ensembles.final_candidates(list(ensembles.MEANS), inp) == list(ensembles.MEANS)
    with pytest.raises(ValueError, match="unknown mean 'nope'"):
        ensembles.members("nope")
    with pytest.raises(ValueError, match="unknown variants \\['nope'\\]"):
        ensembles.evaluate(inp, ["ridge", "nope"], n_splits=1, progress=False)


def test_a_member_that_no_longer_reproduces_its_row_is_an_error(fast_variants, monkeypatch):
    inp = _inputs()
    protocol.evaluate_row(inp, "lmc", 0)
    real = ensembles._member_scorer
    monkeypatch.setattr(ensembles, "_member_scorer",
                        lambda i, m, s: (lambda rows: real(i, m, s)(rows) + np.arange(len(rows))) if m == "lmc" else real(i, m, s))
    with pytest.raises(RuntimeError, match="'lmc' on split 0 does not reproduce its cached row"):
        ensembles.evaluate_mean_row(inp, MEAN, 0)


def test_final_mean_holds_the_models_its_rows_averaged(fast_variants, monkeypatch):
    inp = _inputs()
    table = ensembles.evaluate(inp, ["ridge", "decoder", MEAN], n_splits=2, progress=False, n_jobs=1)
    assert ensembles.final_candidates(["ridge", "decoder", MEAN], inp) == ["decoder", MEAN]
    final, kind, info = ensembles.fit_final(inp, MEAN, table)
    assert kind == "mean" and info["splits"] == [0, 1] and info["members"] == list(ensembles.members(MEAN))
    (wr, wr_kind, wr_models), (lmc, lmc_kind, lmc_models) = final.members
    assert (wr_kind, lmc_kind) == ("token-decoder", "pooled-crops") and len(wr_models) == len(lmc_models) == 2
    rows = inp.parts(1)["test"]
    with one_torch_thread():
        expected = protocol._fit(inp, lmc, 1)[0](rows)  # the lmc row's own fit
    np.testing.assert_array_equal(lmc_models[1].predict(inp.crops[rows]), expected)
    kept = protocol.trained_model(inp, wr, 1)
    np.testing.assert_array_equal(wr_models[1].trained.predict(inp.tokens, rows), kept.predict(inp.tokens, rows))
    again = predict.MeanOfModels.from_state(predict.to_plain(final.state()))
    np.testing.assert_array_equal(again.members[1][2][1].predict(inp.crops[rows]), expected)
    monkeypatch.setattr(protocol, "_fit", lambda *a: pytest.fail("a kept member model was refitted"))
    ensembles.fit_final(inp, MEAN, table)
    with pytest.raises(ValueError, match="results hold no rows"):
        ensembles.fit_final(inp, MEAN, table[table.variant == "ridge"])
