"""The train and tune flows share their first steps through flows/prepare.py and flows/workers.py, never by
importing each other: a worker starting a tune run must not pull in the train flow (nor the other way)."""

import ast
from pathlib import Path

import ml_lifecycle._internal.flows as flows

FLOWS = Path(flows.__file__).parent


def imported(module: str) -> set[str]:
    """Every flows module `module` imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse((FLOWS / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {alias.name for alias in node.names}
    return names


def test_the_train_and_tune_flows_do_not_import_each_other():
    assert "tune" not in imported("train")
    assert "train" not in imported("tune")
    assert "prepare" in imported("train") & imported("tune")
