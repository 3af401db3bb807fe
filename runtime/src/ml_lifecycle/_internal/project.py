"""Which project the machinery serves: its package (where dataset.py, features.py and model.py live) and
its folder. The project's __init__.py calls `ml_lifecycle.bind(__name__, __file__)`; nothing is read here."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType


@dataclass(frozen=True)
class Project:
    package: str
    directory: Path  # the package's folder: src/<package>/ in a checkout, <package>/ inside a Bento


_bound: Project | None = None


def bind(package: str, file: str) -> Project:
    """Record the project once per process; binding a second, different project is an error, since every
    metric, event and setting name is derived from the package."""
    global _bound
    project = Project(package.split(".")[0], Path(file).resolve().parent)
    if _bound is not None and _bound != project:
        raise RuntimeError(
            f"ml_lifecycle already serves {_bound.package} ({_bound.directory}), not {package}"
        )
    _bound = project
    return project


def bound() -> Project:
    if _bound is None:
        raise RuntimeError(
            "ml_lifecycle serves a project: import the project's package first (its __init__.py calls "
            "ml_lifecycle.bind(__name__, __file__))"
        )
    return _bound


def user_module(name: str) -> ModuleType:
    """One of the user's three files (dataset, features, model), imported when first asked for."""
    return import_module(f"{bound().package}.{name}")
