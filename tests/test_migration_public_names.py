"""The library migration rewrites a project's imports of public names to `from ml_lifecycle import ...`: the
names it takes for public must be what the library exports, module by module (it reads them from the
library's source, since Copier's Python does not have the library)."""

from __future__ import annotations

import ast
import importlib
import sys

import ml_lifecycle
from conftest import REPO

INTERNAL = REPO / "runtime" / "src" / "ml_lifecycle" / "_internal"


def defined(module: str) -> set[str]:
    """The top-level functions, classes and assigned names of ml_lifecycle._internal.<module>, read from
    its source (importing it needs a bound project)."""
    tree = ast.parse((INTERNAL / f"{module}.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assigned = (t for n in tree.body if isinstance(n, ast.Assign | ast.AnnAssign) for t in ast.walk(n))
    return names | {t.id for t in assigned if isinstance(t, ast.Name)}


def test_the_migrations_public_names_are_the_librarys_exports_by_module(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "hooks" / "migrations"))
    monkeypatch.delitem(sys.modules, "library", raising=False)
    public = importlib.import_module("library").PUBLIC
    # bind is the package's own: no 1.x module had it
    assert set().union(*public.values()) == set(ml_lifecycle.__all__) - {"bind"}
    for module, names in public.items():
        assert names <= defined(module), module
    assert public["config"] >= {"Settings", "get_settings"} and public["tables"] >= {"read_table"}
