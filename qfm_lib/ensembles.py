"""Means of registry variants: the equal-weight mean of its members' predictions, scored like a
protocol row (validation and test metrics of one split, the test part scored once).

A mean adds no choice: no weight, no setting, nothing fitted on top of its members. Each member is
the model that its own protocol row trained on the split: the model the protocol kept beside the row
(`protocol.trained_model`) where it keeps one; the other kinds are refitted exactly as their rows fit
them, on one torch thread. Either way, the model must reproduce its row's validation score (else an
error says so).

A mean's row is cached, keyed by its members' row keys and this module's code. This module lies
outside the protocol's code digest (protocol.py does not import it), so adding a mean leaves every
cached protocol row valid.

A mean's final model for `qfm predict` (`fit_final`) is made of the same models: each member's models
of the protocol splits, averaged, and the members averaged with equal weights. Nothing is retrained
on all images (as protocol.fit_final does for single variants): every model in it is one whose
validation and test scores are in the tables.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import predict, protocol
from .cache import atomic_write, cache_path, code_only, digest
from .decoder import TrainedDecoder
from .features import one_torch_thread
from .manifold import TrainedCrops
from .metrics import iqa_metrics, selection_score

# Not a method of either paper: the best token model and the best pooled-crop model, averaged. Added
# after a validation-only exploration (docs/method.md, "Two complementary models"; equal weights fixed
# beforehand; its members' test medians were already in the committed table, which is why it is disclosed).
# The second came from a validation-only greedy selection of members, its rule fixed before it ran
# (docs/explorations/mean_members.py): it chose the decoder and lmc (median validation score 0.852
# against 0.848 for the first; its first step was a near-tie, decoder 0.8384 against window regression 0.8380).
# The third: the same rule rerun on the rows of 2026-12-05 (batches of 16, the rerun settings search), as
# its rule asks whenever the rows change; it chose window regression, lmc and qfm-iqm (median validation
# score 0.8516 against 0.8478 for the first; a fourth member would have lowered it).
# The fourth: the same rule rerun once the learned tail's rows joined notebook 06 (2026-12-05). On the rows
# with the tail at rate 0.3 it chose the learned tail, lmc and qfm-iqm (0.8544); on the committed rows (the
# tail at rate 1, docs/explorations/tail_rate.py) the learned tail, lmc and window regression (0.8535 against
# 0.8516 for the third; qfm-iqm as a fourth member would have added 0.0004, below the rule's 0.002). Rerun
# once the tail had two blocks (docs/explorations/deeper_tail.py): the same three members (0.8575); and once its
# input was built on one thread (its rows changed a little): the same three (0.8562). The fifth: rerun once the
# tail's depthwise convolutions ran in float32 (2026-12-06; its rows changed a little again), the rule chose the
# learned tail (0.8461), lmc (0.8545) and qfm-iqm (0.8568; window regression in its place 0.8559; decoder+gate
# as a fourth would have added 0.0002, below the rule's 0.002).
MEANS: dict[str, tuple[str, ...]] = {
    "window regression + lmc (mean)": ("window regression (EMA)", "lmc"),
    "decoder + lmc (mean)": ("decoder", "lmc"),
    "window regression + lmc + qfm-iqm (mean)": ("window regression (EMA)", "lmc", "qfm-iqm (gate+adversarial matching)"),
    "learned tail + lmc + window regression (mean)": ("window regression + learned tail", "lmc", "window regression (EMA)"),
    "learned tail + lmc + qfm-iqm (mean)": ("window regression + learned tail", "lmc", "qfm-iqm (gate+adversarial matching)"),
}
ALL_VARIANTS: list[str] = protocol.ALL_VARIANTS + list(MEANS)
# A final mean holds its members' kept models (the kinds in protocol.KEPT_KINDS); predict.py's kind of each.
PREDICT_KIND = {TrainedDecoder: "token-decoder", TrainedCrops: "pooled-crops"}
_CODE = digest(code_only(Path(__file__).read_text()))


def members(name: str) -> tuple[str, ...]:
    if name not in MEANS:
        raise ValueError(f"unknown mean {name!r}; known: {list(MEANS)}")
    return MEANS[name]


def mean_row_key(inp: protocol.ProtocolInputs, name: str, split: int) -> dict:
    """What a mean's row depends on: its members' rows and this module's code."""
    return {"code": _CODE, "mean": name, "members": [protocol.row_key(inp, m, split) for m in members(name)]}


def _mean_row_path(inp: protocol.ProtocolInputs, name: str, split: int) -> Path:
    return cache_path("results", mean_row_key(inp, name, split), ".json")


def member_model(inp: protocol.ProtocolInputs, member: str, split: int) -> TrainedDecoder | TrainedCrops:
    """The model that `member`'s row trained on `split` (kinds in protocol.KEPT_KINDS), kept beside the row
    by the protocol."""
    v = inp.variant(member)
    if v.kind not in protocol.KEPT_KINDS:
        raise ValueError(f"{member!r} ({v.kind}) has no model a mean can keep; kinds that do: {sorted(protocol.KEPT_KINDS)}")
    return protocol.trained_model(inp, member, split)


def _model_scorer(inp: protocol.ProtocolInputs, model: TrainedDecoder | TrainedCrops) -> Callable[[np.ndarray], np.ndarray]:
    """A member model's predictions (rows -> MOS scale) from the features it reads."""
    if isinstance(model, TrainedDecoder):
        return lambda rows: model.predict(inp.tokens_for(model.config), rows)
    return lambda rows: model.predict(inp.crops[rows])


def _member_scorer(inp: protocol.ProtocolInputs, member: str, split: int) -> Callable[[np.ndarray], np.ndarray]:
    """Predictions (rows -> MOS scale) of the model that `member`'s row trained on `split`."""
    if inp.variant(member).kind not in protocol.KEPT_KINDS:
        return protocol._fit(inp, member, split)[0]  # the row's own fit, refitted (deterministic)
    return _model_scorer(inp, member_model(inp, member, split))


def _check_reproduces(inp: protocol.ProtocolInputs, member: str, split: int,
                      score: Callable[[np.ndarray], np.ndarray]) -> None:
    """A member's predictions must reproduce its row's validation score (else a RuntimeError)."""
    row = protocol.evaluate_row(inp, member, split)
    val = inp.parts(split)["val"]
    got = selection_score(score(val), inp.y[val])
    if not np.isclose(got, row["val_score"], rtol=0, atol=1e-6):
        raise RuntimeError(f"{member!r} on split {split} does not reproduce its cached row (validation score "
                           f"{got:.6f} vs {row['val_score']:.6f}): clear the cache's results and models, then rerun")


def verified_scorer(inp: protocol.ProtocolInputs, member: str, split: int) -> Callable[[np.ndarray], np.ndarray]:
    """Predictions (rows -> MOS scale) of the model that `member`'s row trained on `split`, checked to
    reproduce that row's validation score (else a RuntimeError). Call it on one torch thread, as the
    rows were computed."""
    score = _member_scorer(inp, member, split)
    _check_reproduces(inp, member, split, score)
    return score


def evaluate_mean_row(inp: protocol.ProtocolInputs, name: str, split: int) -> dict:
    """The mean `name` on one split, as a protocol row (cached). fit_seconds: its members' rows' sum,
    what training the mean costs."""
    path = _mean_row_path(inp, name, split)
    if path.is_file():
        return json.loads(path.read_text())
    own = {m: protocol.evaluate_row(inp, m, split) for m in members(name)}
    parts = inp.parts(split)
    val, test = parts["val"], parts["test"]
    with one_torch_thread():  # as the protocol's rows (a refit reproduces its row only on one thread)
        scorers = [verified_scorer(inp, m, split) for m in own]
        val_pred = np.mean([score(val) for score in scorers], axis=0)
        test_metrics = iqa_metrics(np.mean([score(test) for score in scorers], axis=0), inp.y[test])
    val_metrics = iqa_metrics(val_pred, inp.y[val])
    row = {"variant": name, "split": split, **{k: test_metrics[k] for k in ("plcc", "srcc", "krcc", "rmse")},
           "val_score": selection_score(val_pred, inp.y[val]), "val_plcc": val_metrics["plcc"],
           "val_srcc": val_metrics["srcc"], "fit_seconds": round(sum(r["fit_seconds"] for r in own.values()), 2),
           "settings": {m: r["settings"] for m, r in own.items()}}
    atomic_write(path, lambda fh: fh.write(json.dumps(row, default=float)), mode="w")
    return row


def _row(inp: protocol.ProtocolInputs, name: str, split: int) -> dict:
    return evaluate_mean_row(inp, name, split) if name in MEANS else protocol.evaluate_row(inp, name, split)


def evaluate(inp: protocol.ProtocolInputs, variants: list[str], n_splits: int = 10, progress: bool = True,
             n_jobs: int | None = None) -> pd.DataFrame:
    """protocol.evaluate for a list that may hold means: the protocol computes every needed member row
    (in parallel), then the means' rows are computed (n_jobs worker processes). Rows as protocol.evaluate."""
    from joblib import delayed

    unknown = [v for v in variants if v not in MEANS and v not in inp.variants]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(inp.variants) + list(MEANS)}")
    needed = list(dict.fromkeys(m for v in variants for m in (members(v) if v in MEANS else (v,))))
    protocol.evaluate(inp, needed, n_splits, progress, n_jobs)
    todo = [(v, s) for s in range(n_splits) for v in variants
            if v in MEANS and not _mean_row_path(inp, v, s).is_file()]
    if todo:
        print(f"means: {len(todo)} rows to compute")
        n_jobs = min(n_jobs or protocol.default_jobs(), len(todo))
        with protocol.worker_results((delayed(evaluate_mean_row)(inp, v, s) for v, s in todo), n_jobs) as done:
            for _ in tqdm(done, total=len(todo), desc="mean rows", disable=not progress):
                pass
    return pd.DataFrame([_row(inp, name, split) for split in range(n_splits) for name in variants])


def final_candidates(variants: list[str], inp: protocol.ProtocolInputs) -> list[str]:
    """The variants of `variants` that can be a final model for `qfm predict`: registry variants of
    protocol.FINAL_KINDS, and means whose members all keep a model (protocol.KEPT_KINDS)."""
    return [v for v in variants
            if (v in MEANS and all(inp.variant(m).kind in protocol.KEPT_KINDS for m in members(v)))
            or (v not in MEANS and inp.variant(v).kind in protocol.FINAL_KINDS)]


def fit_final(inp: protocol.ProtocolInputs, name: str, results: pd.DataFrame):
    """The final model of `name` for `qfm predict`: (model, predict.py model kind, info). A registry
    variant: protocol.fit_final (retrained on every image). A mean: a predict.MeanOfModels of its
    members' models of the splits in `results` (the models its rows averaged), nothing retrained."""
    if name not in MEANS:
        return protocol.fit_final(inp, name, results)
    if name not in final_candidates([name], inp):
        raise ValueError(f"{name!r} cannot be a final model: each member needs one of {sorted(protocol.KEPT_KINDS)}")
    splits = sorted(int(s) for s in results.loc[results.variant == name, "split"])
    if not splits:
        raise ValueError(f"results hold no rows of {name!r}: evaluate it first")
    groups = []
    with one_torch_thread():
        for m in members(name):
            models = [member_model(inp, m, s) for s in splits]
            for s, model in zip(splits, models):
                _check_reproduces(inp, m, s, _model_scorer(inp, model))
            groups.append((m, PREDICT_KIND[type(models[0])], models))
    info = {"variant": name, "members": list(members(name)), "splits": splits,
            "final": "each member's models of these protocol splits, averaged; the members averaged"}
    return predict.MeanOfModels(groups), "mean", info
