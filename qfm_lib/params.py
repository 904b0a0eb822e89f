"""Notebook parameter checks: the cell after `parameters`, tagged `parameter-checks`, calls
`validate(globals(), SCHEMA)`; the batch also runs it before any notebook starts (batch.check_parameters).

At that point the only plain values in the namespace are the notebook's parameters and whatever
papermill injected, so any name the schema does not know is an unknown parameter.
"""
from __future__ import annotations

import math
import os
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class ParameterError(ValueError):
    """Bad notebook parameters; the message lists every problem."""


Check = Callable[[str, Any], str | None]


def positive_int(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"{name} must be a positive integer, got {value!r}"
    return None


def nonneg_int(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{name} must be an integer >= 0, got {value!r}"
    return None


def optional_positive_int(name: str, value: Any) -> str | None:
    return None if value is None else positive_int(name, value)


def _number(value: Any) -> bool:
    """A finite int or float that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fraction(name: str, value: Any) -> str | None:
    if not _number(value) or not 0 <= value <= 1:
        return f"{name} must be a number in 0..1, got {value!r}"
    return None


def positive_float(name: str, value: Any) -> str | None:
    if not _number(value) or not value > 0:
        return f"{name} must be a finite positive number, got {value!r}"
    return None


def nonneg_float(name: str, value: Any) -> str | None:
    if not _number(value) or not value >= 0:
        return f"{name} must be a finite number >= 0, got {value!r}"
    return None


def text(name: str, value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"{name} must be a non-empty string, got {value!r}"


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> str | None:
        known = any(value == c and _is_bool(value) == _is_bool(c) for c in choices)  # True is not 1
        return None if known else f"{name} must be one of {list(choices)}, got {value!r}"
    return check


def list_of(item: Check, allowed: list | None = None) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or not value:
            return f"{name} must be a non-empty list, got {value!r}"
        for i, v in enumerate(value):
            problem = item(f"{name}[{i}]", v)
            if problem:
                return problem
            if allowed is not None and v not in allowed:
                return f"{name}[{i}] = {v!r} is not one of {allowed}"
        return None
    return check


def optional(check: Check) -> Check:
    """None, or a value `check` accepts."""
    def wrapped(name: str, value: Any) -> str | None:
        return None if value is None else check(name, value)
    return wrapped


def setting_grid(name: str, value: Any) -> str | None:
    """A search grid: {DecoderConfig setting: non-empty list of values}, each combination of which the
    settings search can set on its variant's config."""
    import itertools
    from dataclasses import fields, replace

    from .decoder import DecoderConfig
    from .protocol import TUNING_VARIANT, VARIANTS

    if not isinstance(value, dict) or not value:
        return f"{name} must be a non-empty dict of setting -> list of values, got {value!r}"
    settings = sorted(f.name for f in fields(DecoderConfig))
    for key, values in value.items():
        if key not in settings:
            return f"{name}: {key!r} is not a decoder setting (DecoderConfig: {settings})"
        if not isinstance(values, (list, tuple)) or not values:
            return f"{name}[{key!r}] must be a non-empty list of values, got {values!r}"
    base = VARIANTS[TUNING_VARIANT].config
    for combination in itertools.product(*value.values()):  # as the search sets them
        setting = dict(zip(value, combination))
        try:
            replace(base, **setting)
        except (TypeError, ValueError) as err:
            return f"{name}: the setting {setting} is not usable ({err})"
    return None


def dataset_name(name: str, value: Any) -> str | None:
    from .data import DATASETS

    known = isinstance(value, str) and value in DATASETS
    return None if known else f"{name} must be a known dataset {sorted(DATASETS)}, got {value!r}"


def backbone_name(name: str, value: Any) -> str | None:
    """A timm model name (the hub must be reachable for any but the packaged ones)."""
    from .backbones import PACKAGED_WEIGHTS

    if isinstance(value, str) and value in PACKAGED_WEIGHTS:
        return None
    import timm

    if isinstance(value, str) and value in timm.list_models():
        return None
    return f"{name} must be a timm model name (weights offline: {sorted(PACKAGED_WEIGHTS)}), got {value!r}"


def writable_folder(name: str, value: Any) -> str | None:
    """A folder that exists and is writable, or that can be created (a relative path is taken from
    the notebook's folder, where the batch and JupyterLab run it)."""
    if problem := text(name, value):
        return problem
    path = Path(value).absolute()
    if path.exists() and not path.is_dir():
        return f"{name} {value!r} is a file, not a folder"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{name} {value!r}: cannot write into {existing}"
    return None


def check_splits(dataset: str, n_splits: int, committed: dict[str, int] | None = None, **indices: int) -> None:
    """n_splits, and each split index given (e.g. curve_split=0), against the dataset's committed
    split file; raise ParameterError naming the file. `committed`: indices that may be any committed
    split, run or not (e.g. the settings search's, which reads only validation parts)."""
    from .splits import load_splits, split_file

    try:
        available = load_splits(dataset).filter(like="split_").shape[1]
    except FileNotFoundError as err:
        raise ParameterError(f"no committed split file for dataset {dataset!r} ({err})") from err
    path = split_file(dataset)
    limit = min(n_splits, available)
    problems = [f"n_splits {n_splits} exceeds the {available} splits committed in {path}"] if n_splits > available else []
    problems += [f"{k} {v} must be < {limit}, the number of splits run" for k, v in indices.items() if v >= limit]
    problems += [f"{k} {v} must be < {available}, the number of splits committed in {path}"
                 for k, v in (committed or {}).items() if v >= available]
    problems += [f"{k} {v} must be >= 0" for k, v in {**indices, **(committed or {})}.items() if v < 0]
    if problems:
        raise ParameterError("bad notebook parameters:\n  - " + "\n  - ".join(problems))


def validate(namespace: dict[str, Any], schema: dict[str, Check]) -> dict[str, Any]:
    """Check the notebook's parameters; raise ParameterError listing unknown names and bad values."""
    values = {k: v for k, v in namespace.items()
              if not k.startswith("_") and k not in _IPYTHON_NAMES
              and not isinstance(v, (types.ModuleType, types.FunctionType, type))
              and not callable(v)}
    problems = [f"unknown parameter {k!r} (known: {sorted(schema)})" for k in values if k not in schema]
    problems += [f"parameter {k!r} is not set" for k in schema if k not in values]
    problems += [p for k, check in schema.items() if k in values and (p := check(k, values[k]))]
    if problems:
        raise ParameterError("bad notebook parameters:\n  - " + "\n  - ".join(problems))
    return {k: values[k] for k in schema}
