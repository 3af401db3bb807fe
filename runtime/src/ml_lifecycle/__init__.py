"""The lifecycle of a tabular model as Prefect flows: train with Optuna, register, gate and serve with
BentoML, monitor with Evidently, retrain on drift. A project binds itself once (its __init__.py) and
keeps only dataset.py, features.py and model.py; the public API is listed in runtime/API.md.

Names are imported when first used, so `import ml_lifecycle` reads nothing and binds nothing."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports each name when first asked
    from ._internal.cli import main
    from ._internal.config import Settings, SettingsError, get_settings
    from ._internal.tables import DataError, normalize_columns, read_table

__version__ = "2.0.0"

__all__ = [
    "DataError",
    "Settings",
    "SettingsError",
    "bind",
    "get_settings",
    "main",
    "normalize_columns",
    "read_table",
]

_WHERE = {
    "DataError": "tables",
    "Settings": "config",
    "SettingsError": "config",
    "get_settings": "config",
    "main": "cli",
    "normalize_columns": "tables",
    "read_table": "tables",
}


def bind(package: str, file: str) -> None:
    """Make this process serve the project whose package is `package` (call as `bind(__name__, __file__)`
    from its __init__.py): settings, metric and event names come from it, and BentoML uses its store. Binding
    only records the package: the settings (and the store they name) are read when first needed, so
    importing the project cannot fail on them or change the environment."""
    from ._internal.project import bind as record

    record(package, file)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"{__name__}._internal.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
