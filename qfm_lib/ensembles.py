"""Means of registry variants: the equal-weight mean of its members' predictions, scored like a
protocol row (validation and test metrics of one split, the test part scored once).

A mean adds no choice: no weight, no setting, nothing fitted on top of its members. Each member is
the model that its own protocol row trained on the split: token models are the kept models
(`protocol.trained_model`); the other kinds are refitted exactly as their rows fit them, on one
torch thread, and the refit must reproduce its row's validation score (else an error says so).

A mean's row is cached, keyed by its members' row keys and this module's code. This module lies
outside the protocol's code digest (protocol.py does not import it), so adding a mean leaves every
cached protocol row valid.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import protocol
from .cache import atomic_write, cache_path, digest
from .metrics import iqa_metrics, selection_score

# Not a method of either paper: the best token model and the best pooled-crop model, averaged. Added
# after a validation-only exploration (docs/method.md, "Two complementary models"; equal weights fixed
# beforehand; its members' test medians were already in the committed table, which is why it is disclosed).
MEANS: dict[str, tuple[str, ...]] = {
    "window regression + lmc (mean)": ("window regression (EMA)", "lmc"),
}
ALL_VARIANTS: list[str] = protocol.ALL_VARIANTS + list(MEANS)
_CODE = digest(protocol._code_only(Path(__file__).read_text()))


def members(name: str) -> tuple[str, ...]:
    if name not in MEANS:
        raise ValueError(f"unknown mean {name!r}; known: {list(MEANS)}")
    return MEANS[name]


def mean_row_key(inp: protocol.ProtocolInputs, name: str, split: int) -> dict:
    """What a mean's row depends on: its members' rows and this module's code."""
    return {"code": _CODE, "mean": name, "members": [protocol.row_key(inp, m, split) for m in members(name)]}


def _mean_row_path(inp: protocol.ProtocolInputs, name: str, split: int) -> Path:
    return cache_path("results", mean_row_key(inp, name, split), ".json")


def _member_scorer(inp: protocol.ProtocolInputs, member: str, split: int) -> Callable[[np.ndarray], np.ndarray]:
    """Predictions (rows -> MOS scale) of the model that `member`'s row trained on `split`."""
    if inp.variant(member).kind in protocol.TOKEN_KINDS:
        model = protocol.trained_model(inp, member, split)
        return lambda rows: model.predict(inp.tokens, rows)
    return protocol._fit(inp, member, split)[0]  # the row's own fit, refitted (deterministic)


def evaluate_mean_row(inp: protocol.ProtocolInputs, name: str, split: int) -> dict:
    """The mean `name` on one split, as a protocol row (cached). fit_seconds: its members' rows' sum,
    what training the mean costs."""
    path = _mean_row_path(inp, name, split)
    if path.is_file():
        return json.loads(path.read_text())
    own = {m: protocol.evaluate_row(inp, m, split) for m in members(name)}
    parts = inp.parts(split)
    val, test = parts["val"], parts["test"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the members' rows were computed
    try:
        scorers = {m: _member_scorer(inp, m, split) for m in own}
        val_preds = {m: score(val) for m, score in scorers.items()}
        for m, pred in val_preds.items():
            if not np.isclose(selection_score(pred, inp.y[val]), own[m]["val_score"], rtol=0, atol=1e-6):
                raise RuntimeError(f"{m!r} on split {split} does not reproduce its cached row (validation score "
                                   f"{selection_score(pred, inp.y[val]):.6f} vs {own[m]['val_score']:.6f}): "
                                   f"clear the cache's results and models, then rerun")
        val_pred = np.mean(list(val_preds.values()), axis=0)
        test_metrics = iqa_metrics(np.mean([score(test) for score in scorers.values()], axis=0), inp.y[test])
    finally:
        torch.set_num_threads(threads)
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
    from joblib import Parallel, delayed

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
        done = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")(
            delayed(evaluate_mean_row)(inp, v, s) for v, s in todo)
        for _ in tqdm(done, total=len(todo), desc="mean rows", disable=not progress):
            pass
    return pd.DataFrame([_row(inp, name, split) for split in range(n_splits) for name in variants])
