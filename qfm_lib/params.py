"""Notebook parameter checks: the cell after `parameters`, tagged `parameter-checks`, calls
`validate(globals(), SCHEMA)`; the batch also runs it before any notebook starts (batch.check_parameters).

At that point the only plain values in the namespace are the notebook's parameters and whatever
papermill injected, so any name the schema does not know is an unknown parameter.
"""
from __future__ import annotations

import types
from typing import Any, Callable

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


def fraction(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return f"{name} must be a number in 0..1, got {value!r}"
    return None


def positive_float(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return f"{name} must be a positive number, got {value!r}"
    return None


def nonneg_float(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return f"{name} must be a number >= 0, got {value!r}"
    return None


def text(name: str, value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"{name} must be a non-empty string, got {value!r}"


def one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> str | None:
        return None if value in choices else f"{name} must be one of {list(choices)}, got {value!r}"
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
    """A search grid: {setting name: non-empty list of values}."""
    if not isinstance(value, dict) or not value:
        return f"{name} must be a non-empty dict of setting -> list of values, got {value!r}"
    for key, values in value.items():
        if not isinstance(key, str) or not isinstance(values, (list, tuple)) or not values:
            return f"{name}[{key!r}] must be a non-empty list of values, got {values!r}"
    return None


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
