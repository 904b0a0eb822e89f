"""The protocol runner: cached rows, keys, and model selection that never reads test labels."""

import contextlib
from dataclasses import replace
import itertools
from pathlib import Path
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from qfm_lib import protocol
from qfm_lib.cache import atomic_write, cache_path, code_files, code_only, digest
from qfm_lib.manifold import ManifoldConfig
from qfm_lib.metrics import selection_score
from qfm_lib.models import TrainConfig
from qfm_lib.tokens import TokenSet


def _inputs(n=90, d=16, k=3, seed=0, n_views=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 50 + 15 * x[:, 0] - 10 * x[:, 1] + rng.normal(0, 2, n)
    crops = x[:, None, :] + rng.normal(0, 0.3, (n, k, d))
    names = [f"img{i}" for i in range(n)]
    splits = pd.DataFrame({"image": names})
    for s in range(2):
        parts = np.array(["train"] * 54 + ["val"] * 18 + ["test"] * 18)
        splits[f"split_{s}"] = rng.permutation(parts)
    order = np.argsort(-rng.random((n, k)), axis=1)
    cells = np.repeat(x[:, None, :8], 16, axis=1) + rng.normal(0, 0.5, (n, 16, 8))  # 4x4 token maps
    tokens = TokenSet(cells.reshape(-1, 8).astype(np.float16), np.full((n, 2), 4), names)
    return protocol.ProtocolInputs(x, y, splits, {"full_entry": "F", "crops_entry": "C"}, crops, order,
                            rng.normal(size=(n, 5)), n_views, 0, tokens, rng.random((n, 4, 4)))


def test_every_variant_runs_and_rows_are_cached(fast_variants, monkeypatch):
    inp = _inputs()
    first = protocol.evaluate(inp, list(fast_variants), n_splits=1, progress=False)
    assert list(first.variant) == list(fast_variants)
    assert first[["plcc", "srcc", "krcc", "rmse", "val_score"]].notna().all().all()
    assert first.set_index("variant").loc["gated+matching+distillation", "settings"]["eps"] in protocol.MATCHING_EPS_GRID
    monkeypatch.setattr(protocol, "_fit", lambda *a: pytest.fail("a cached row was recomputed"))
    again = protocol.evaluate(inp, list(fast_variants), n_splits=1, progress=False)
    pd.testing.assert_frame_equal(first, again)


def test_parallel_rows_equal_serial_rows(fast_variants, tmp_path, monkeypatch):
    inp = _inputs()
    names = ["ridge", "decoder+gate", "qfm-iqm + distillation", "lmc-windows"]
    serial = protocol.evaluate(inp, names, n_splits=2, progress=False, n_jobs=1)
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path / "other"))
    parallel = protocol.evaluate(inp, names, n_splits=2, progress=False, n_jobs=2)
    cols = ["variant", "split", "plcc", "srcc", "krcc", "rmse", "val_score", "settings"]
    pd.testing.assert_frame_equal(serial[cols], parallel[cols])


def test_code_digest_covers_every_imported_module(package_copy):
    # the modules a result row's code imports today (a new import must join this list knowingly)
    assert code_files("protocol") == sorted(f"{m}.py" for m in (
        "analysis", "backbones", "baselines", "cache", "data", "decoder", "features", "images", "local_manifold",
        "manifold", "metrics", "models", "pairs", "paths", "protocol", "qfm_iqm", "saliency", "splits", "stats",
        "tail", "tokens", "training"))
    # read from a copy of the sources, whose metrics.py is then given one more line of code
    before = protocol._code_digest()
    (package_copy / "metrics.py").write_text((package_copy / "metrics.py").read_text() + "\nEXTRA = 1\n")
    assert protocol._code_digest() != before


def test_selection_never_reads_test_labels(fast_variants):
    inp = _inputs()
    test = inp.parts(0)["test"]
    shuffled = inp.y.copy()
    shuffled[test] = np.random.default_rng(1).permutation(shuffled[test])[::-1]
    other = protocol.ProtocolInputs(inp.x, shuffled, inp.splits, {"full_entry": "F2", "crops_entry": "C2"},
                             inp.crops, inp.crop_order, inp.brisque, inp.n_views, 0, inp.tokens, inp.cell_saliency)
    for name in ["ridge", "gated+matching", "lmc", "qfm-iqm (gate+adversarial matching)", "lmc-windows"]:
        a, b = protocol.evaluate_row(inp, name, 0), protocol.evaluate_row(other, name, 0)
        assert a["settings"] == b["settings"] and a["val_score"] == pytest.approx(b["val_score"])
        assert a["srcc"] != pytest.approx(b["srcc"])  # the test metrics did read the (shuffled) test labels


def test_row_keys_follow_what_a_row_depends_on():
    inp = _inputs()
    key = protocol.row_key(inp, "gated", 0)
    assert key != protocol.row_key(inp, "gated", 1)
    assert protocol.row_key(inp, "gated", 0) == protocol.row_key(protocol.ProtocolInputs(**{**inp.__dict__, "n_views": 1}), "gated", 0)
    assert protocol.row_key(inp, "gated+matching+distillation", 0) != protocol.row_key(
        protocol.ProtocolInputs(**{**inp.__dict__, "n_views": 1}), "gated+matching+distillation", 0)
    moved = inp.splits.copy()
    a, b = moved.index[moved.split_0 == "train"][0], moved.index[moved.split_0 == "test"][0]
    moved.loc[[a, b], "split_0"] = ["test", "train"]  # one training image and one test image trade places
    assert protocol.row_key(protocol.ProtocolInputs(**{**inp.__dict__, "splits": moved}), "gated", 0) != key
    other_features = {**inp.feature_entries, "full_entry": "another extraction"}
    assert protocol.row_key(protocol.ProtocolInputs(**{**inp.__dict__, "feature_entries": other_features}), "gated", 0) != key
    assert protocol.row_key(protocol.ProtocolInputs(**{**inp.__dict__, "seed": inp.seed + 1}), "gated", 0) != key
    with pytest.MonkeyPatch.context() as mp:  # a torch upgrade (new kernels) recomputes the rows
        mp.setattr(torch, "__version__", "0.0.1")
        assert protocol.row_key(inp, "gated", 0) != key
    with pytest.raises(ValueError, match="unknown variant"):
        protocol.row_key(inp, "no such variant", 0)


def test_missing_inputs_are_named():
    inp = _inputs()
    inp.crops = None
    with pytest.raises(ValueError, match="crops"):
        protocol.evaluate_row(inp, "teacher (ridge on crops)", 0)


def test_registry_configs_are_what_their_names_say():
    v = protocol.VARIANTS
    assert not v["mlp"].config.gated and v["gated"].config.gated and v["gated"].config.matching_weight == 0
    assert v["gated+matching"].config.matching_weight > 0 and v["gated+matching+contrastive"].config.contrastive_weight > 0
    assert v["lmc - intra-class negatives"].config.intra_weight == 0
    assert v["lmc - mutual learning"].config.mutual_weight == 0 and v["lmc"].config.mutual_weight > 0
    assert isinstance(v["lmc"].config, ManifoldConfig) and isinstance(v["mlp"].config, TrainConfig)
    assert not v["decoder"].config.gated and v["decoder+gate"].config.gated and not v["decoder+gate"].config.adv_weight
    q = v["qfm-iqm (gate+adversarial matching)"].config
    assert q.gated and q.adv_weight > 0 and v["qfm-iqm + distillation"].config.distill_weight > 0
    assert v["lmc-windows - intra-class negatives"].config.intra_weight == 0
    assert v["lmc-windows - mutual term"].config.mutual_weight == 0 and v["lmc-windows - mutual term"].config.ema
    assert v["lmc-windows, random anchor"].config.anchor == "random"
    assert v["window regression (EMA)"].config.contrastive_weight == 0


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "x.json"

    def boom(fh):
        fh.write("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom, mode="w")
    assert not target.exists() and list(target.parent.iterdir()) == []
    atomic_write(target, lambda fh: fh.write("ok"), mode="w")
    assert target.read_text() == "ok"
    with pytest.raises(RuntimeError):  # an interrupted rewrite leaves the entry as it was
        atomic_write(target, boom, mode="w")
    assert target.read_text() == "ok" and list(target.parent.iterdir()) == [target]
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1}) != digest({"a": 1, "b": 3})
    assert cache_path("kind", {"a": 1}, ".npy").parent.name == "kind"


def test_code_key_ignores_docstrings_but_not_code():
    a = 'def f(x):\n    """Doubles."""\n    return 2 * x\n'
    b = 'def f(x):\n    """Twice x (reworded)."""\n    # a comment\n    return 2 * x\n'
    c = 'def f(x):\n    """Doubles."""\n    return 3 * x\n'
    assert code_only(a) == code_only(b) != code_only(c)


def test_code_key_leaves_out_the_registry_whose_specs_are_in_row_keys():
    source = Path(protocol.__file__).read_text()
    registry_edit = source.replace("contrastive_weight=0.2", "contrastive_weight=0.3", 1)
    code_edit = source.replace('"version": RESULTS_VERSION, "code"', '"version": RESULTS_VERSION + 1, "code"', 1)
    assert registry_edit != source != code_edit
    skip = protocol.REGISTRY_NAMES
    assert code_only(registry_edit, skip) == code_only(source, skip)
    assert code_only(code_edit, skip) != code_only(source, skip)
    assert code_only(registry_edit) != code_only(source)  # other modules: every assignment
    inp = _inputs()
    lmc = inp.variants["lmc-windows"]
    edited = replace(inp, variants={**inp.variants,
                                    "lmc-windows": replace(lmc, config=replace(lmc.config, mutual_weight=2.0))})
    assert protocol.row_key(edited, "lmc-windows", 0) != protocol.row_key(inp, "lmc-windows", 0)
    for other in ("window regression (EMA)", "decoder", "ridge"):
        assert protocol.row_key(edited, other, 0) == protocol.row_key(inp, other, 0)


def test_models_are_kept_with_their_rows(fast_variants, monkeypatch):
    inp = _inputs()
    rows = {name: protocol.evaluate_row(inp, name, 0) for name in ("lmc-windows", "lmc")}
    monkeypatch.setattr(protocol, "_fit", lambda *a: pytest.fail("a kept model was retrained"))
    model = protocol.trained_model(inp, "lmc-windows", 0)
    val = inp.parts(0)["val"]
    assert selection_score(model.predict(inp.tokens, val), inp.y[val]) == pytest.approx(rows["lmc-windows"]["val_score"], abs=1e-6)
    assert model.best_epoch == rows["lmc-windows"]["settings"]["best_epoch"] and len(model.history) >= model.best_epoch + 1
    crops = protocol.trained_model(inp, "lmc", 0)
    assert selection_score(crops.predict(inp.crops[val]), inp.y[val]) == pytest.approx(rows["lmc"]["val_score"], abs=1e-6)
    with pytest.raises(ValueError, match="has no kept model"):
        protocol.trained_model(inp, "ridge", 0)


def test_final_token_model_is_cached(fast_variants, monkeypatch):
    inp = _inputs()
    results = protocol.evaluate(inp, ["decoder"], n_splits=2, progress=False)
    first, kind, info = protocol.fit_final(inp, "decoder", results)
    monkeypatch.setattr(protocol, "fit_qfm_decoder", lambda *a, **k: pytest.fail("the final model was retrained"))
    again, kind2, info2 = protocol.fit_final(inp, "decoder", results)
    assert (kind, info) == (kind2, info2) and kind == "token-decoder"
    assert info["epochs"] == int(np.median([s["best_epoch"] for s in results.settings])) + 1
    rows = np.arange(len(inp.y))
    np.testing.assert_allclose(first.predict(inp.tokens, rows), again.predict(inp.tokens, rows), rtol=1e-6)


def test_settings_search_scores_validation_only_and_picks_the_best_median(fast_variants):
    inp = _inputs()
    table = protocol.tune(inp, {"dim": (8, 16), "lr": (1e-3,)}, splits=(0, 1), variant="decoder", progress=False,
                          n_jobs=1)
    assert len(table) == 4 and set(table.dim) == {8, 16}
    assert not {"plcc", "srcc", "rmse"} & set(table.columns)  # no test part scored
    medians = table.groupby("dim").val_score.median()
    assert protocol.tuning_choice(table) == {"dim": int(medians.idxmax()), "lr": 1e-3}
    with pytest.raises(ValueError, match="unknown DecoderConfig"):
        protocol.tune(inp, {"width": (8,)}, splits=(0,), variant="decoder", progress=False)
    with pytest.raises(ValueError, match="token-model"):
        protocol.tune(inp, {"dim": (8,)}, splits=(0,), variant="ridge", progress=False)


def test_registry_uses_the_settings_the_search_chose():
    with pytest.raises(RuntimeError, match="tuned_settings.json"):
        protocol.check_tuned({**protocol.TUNED, "dim": protocol.TUNED["dim"] + 1})
    protocol.check_tuned(dict(protocol.TUNED))
    # the learned tail has a search of its own (docs/explorations/tail_settings.py), whose choice it takes
    tail_search = Path(__file__).parents[1] / "docs" / "explorations" / "tail_settings.csv"
    own = {"window regression + learned tail": protocol.tuning_choice(pd.read_csv(tail_search))}
    for name, v in protocol.TOKEN_VARIANTS.items():
        assert {k: getattr(v.config, k) for k in protocol.TUNED} == {**protocol.TUNED, **own.get(name, {})}, name
    committed = Path(__file__).parents[1] / "figures" / "tables" / "03_decoder_tuning.csv"
    if committed.is_file():  # the full run's search (notebook 03) chose what the registry uses
        protocol.check_tuned(protocol.tuning_choice(pd.read_csv(committed)))


def test_worker_retirement_warning_silenced_only_while_rows_run():
    import warnings

    message = "A worker stopped while some jobs were given to the executor. This can be caused by ..."
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with protocol.row_workers():
            warnings.warn(message, UserWarning)
            warnings.warn("another warning", UserWarning)
        warnings.warn(message, UserWarning)
    assert [str(w.message) for w in seen] == ["another warning", message]


def test_leaving_worker_results_early_cancels_the_calls_left_and_kills_the_workers():
    # a generator left open while the pool is stopped, or while calls are still handed out, can
    # deadlock in loky; worker_results closes joblib's generator, which cancels the calls left and
    # kills the pool's workers. In a subprocess, so a hang fails.
    code = textwrap.dedent("""
        import multiprocessing, time
        from joblib import delayed
        from qfm_lib import protocol
        start = time.time()
        try:
            with protocol.worker_results((delayed(time.sleep)(0.5) for _ in range(12)), 2) as results:
                for _ in results:
                    raise KeyError("stop")
        except KeyError:
            print(f"left after {time.time() - start:.1f} s; workers left: {len(multiprocessing.active_children())}")
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("left after"), out.stderr
    assert "workers left: 0" in out.stdout and "cancelled" in out.stderr  # joblib's warning names the calls cancelled


def _fake_workers(stop: BaseException, computed: int):
    """A stand-in for protocol.worker_results: computes the first `computed` calls in this process, hands
    out one result, then raises `stop` (a worker's error, an interrupt)."""
    @contextlib.contextmanager
    def results(calls, n_jobs):
        done = [f(*a, **k) for f, a, k in itertools.islice(calls, computed)]

        def handed_out():
            yield done[0]
            raise stop
        yield handed_out()
    return results


def test_a_failed_run_of_rows_names_the_rows_not_on_disk(fast_variants, tmp_path, monkeypatch, capsys):
    inp = _inputs()
    todo = [("ridge", 0), ("ridge", 1), ("mlp", 0)]
    # all three rows finished (written), one was read: none is missing
    monkeypatch.setattr(protocol, "worker_results", _fake_workers(RuntimeError("a worker died"), computed=3))
    with pytest.raises(RuntimeError, match=r"failed \(RuntimeError: a worker died\); not computed: \[\] \(0 of 3\)"):
        protocol._compute_rows(inp, todo, 2, progress=False)
    # interrupted after one row: the interrupt stays one, and the two rows left are named
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path / "other"))
    monkeypatch.setattr(protocol, "worker_results", _fake_workers(KeyboardInterrupt(), computed=1))
    with pytest.raises(KeyboardInterrupt):
        protocol._compute_rows(inp, todo, 2, progress=False)
    assert "was interrupted; not computed: [('ridge', 1), ('mlp', 0)] (2 of 3)" in capsys.readouterr().err


def test_rows_computed_in_this_process_name_the_failing_row_and_the_rows_not_on_disk(fast_variants, tmp_path,
                                                                                        monkeypatch):
    inp = _inputs()
    todo = [("ridge", 0), ("ridge", 1), ("mlp", 0)]
    evaluate_row = protocol.evaluate_row

    def fails_on_second_ridge(inp, name, split, score_test=True):
        if (name, split) == ("ridge", 1):
            raise ValueError("bad row")
        return evaluate_row(inp, name, split, score_test)

    monkeypatch.setattr(protocol, "evaluate_row", fails_on_second_ridge)
    with pytest.raises(ValueError, match="bad row") as caught:  # the error keeps its type
        protocol._compute_missing(inp, todo, 1, progress=False, what="result rows")
    assert caught.value.__notes__ == ["while computing the row ('ridge', 1); not computed: [('ridge', 1), ('mlp', 0)] "
                                      "(2 of 3). Rows already written stay cached: rerunning resumes from them."]
    # an interrupt stays one, with the same note
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path / "other"))
    monkeypatch.setattr(protocol, "evaluate_row", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt) as caught:
        protocol._compute_missing(inp, todo, 1, progress=False, what="result rows")
    assert "while computing the row ('ridge', 0); not computed: [('ridge', 0), ('ridge', 1), ('mlp', 0)] (3 of 3)" \
        in caught.value.__notes__[0]


def test_a_row_another_takes_its_matching_strength_from_goes_first_even_when_not_asked_for(fast_variants, tmp_path,
                                                                                                    monkeypatch):
    inp = _inputs()
    batches = []
    compute = protocol._compute_rows_here
    monkeypatch.setattr(protocol, "_compute_rows_here",
                        lambda inp, todo, progress, score_test=True: (batches.append((todo, score_test)),
                                                                      compute(inp, todo, progress, score_test)))
    protocol.evaluate(inp, ["gated+matching+contrastive"], n_splits=1, progress=False, n_jobs=1)
    assert batches == [([("gated+matching", 0)], True), ([("gated+matching+contrastive", 0)], True)]
    # a settings search (validation only) still reads that row with its test part scored, as _fit does
    batches.clear()
    monkeypatch.setenv("QFM_CACHE_DIR", str(tmp_path / "other"))
    protocol._compute_missing(inp, [("gated+matching+contrastive", 0)], 1, False, "search", score_test=False)
    assert batches == [([("gated+matching", 0)], True), ([("gated+matching+contrastive", 0)], False)]


@pytest.mark.parametrize("value", ["two", "0", "-1", ""])
def test_bad_qfm_jobs_is_named(monkeypatch, value):
    monkeypatch.setenv("QFM_JOBS", value)
    with pytest.raises(ValueError, match=f"QFM_JOBS must be a whole number .* got {value!r}"):
        protocol.default_jobs()


def test_summary_and_final_model_name_a_variant_without_rows(fast_variants):
    results = pd.DataFrame([{"variant": "ridge", "split": 0, "plcc": 0.8, "srcc": 0.8, "krcc": 0.6, "rmse": 1.0,
                             "settings": {}}])
    with pytest.raises(ValueError, match="baseline 'rdige' has no rows in the results table; its variants: \\['ridge'\\]"):
        protocol.summarise(results, "rdige")
    with pytest.raises(ValueError, match="the results table has no rows of 'mlp'"):
        protocol.fit_final(_inputs(), "mlp", results)


def test_final_matching_strength_is_the_majority_and_a_tie_goes_to_the_smaller():
    info = {}
    assert protocol._voted_eps([{"eps": 0.3}, {"eps": 0.15}, {"eps": 0.3}], info) == 0.3
    assert info == {"eps_votes": {"0.15": 1, "0.3": 2}, "eps": 0.3}
    tie = [{"eps": e} for e in (0.3, 0.15, 0.15, 0.3)]
    assert protocol._voted_eps(tie, {}) == protocol._voted_eps(tie[::-1], {}) == 0.15
