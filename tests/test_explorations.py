"""The validation-only scripts in docs/explorations are too slow to run in the tests, but each name
they use from qfm_lib must still exist, so that a rename in the library cannot leave one broken."""
import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "docs" / "explorations").glob("*.py"))


def _qfm_names(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(module, name, line) of every qfm_lib name the script imports or reads as module.name."""
    modules, used = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qfm_lib"):
            for alias in node.names:
                if node.module == "qfm_lib":
                    modules[alias.asname or alias.name] = f"qfm_lib.{alias.name}"
                else:
                    used.append((node.module, alias.name, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            used.append((modules[node.value.id], node.attr, node.lineno))
    return used


def test_there_are_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_qfm_lib_name_exists(script):
    missing = [f"{script.name}:{line}: {module}.{name}" for module, name, line in _qfm_names(ast.parse(script.read_text()))
               if not hasattr(importlib.import_module(module), name)]
    assert not missing, missing
