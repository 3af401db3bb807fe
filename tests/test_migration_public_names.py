"""The library migration rewrites a project's imports of public names to `from ml_lifecycle import ...`: the
names it takes for public must be what the library exports, module by module (it reads them from the
library's source, since Copier's Python does not have the library)."""

from __future__ import annotations

import importlib
import sys

import ml_lifecycle
from conftest import REPO


def test_the_migrations_public_names_are_the_librarys_exports_by_module(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "hooks" / "migrations"))
    monkeypatch.delitem(sys.modules, "library", raising=False)
    library = importlib.import_module("library")
    exported: dict[str, set[str]] = {}
    for name in set(ml_lifecycle.__all__) - {"bind"}:  # bind is the package's own, no 1.x module had it
        module = getattr(ml_lifecycle, name).__module__.removeprefix("ml_lifecycle._internal.")
        exported.setdefault(module, set()).add(name)
    assert exported == library.PUBLIC
    assert library.PUBLIC["config"] >= {"Settings", "get_settings"}
