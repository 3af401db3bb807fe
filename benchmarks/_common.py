"""What the benchmark scripts share: running inside a project, logging to stderr, ratios, leftover
processes, exit codes.

Each benchmark runs as a script (`uv run python benchmarks/<name>.py` in the generator's checkout), so this
folder is on sys.path and `from _common import ...` finds this module. `run(main)` first installs a project
(benchmarks/_project.py) and runs the same script again inside it, where `main` measures.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import _project
from ml_lifecycle._internal.bench.serving import clean_up, kill_leftovers, log, ratio

__all__ = ["ROOT", "clean_up", "kill_leftovers", "load_project", "log", "production_tag", "ratio", "run"]

# The project's folder, inside a project (the script's working directory); elsewhere nothing is measured.
ROOT = Path(os.environ.get(_project.IN_PROJECT) or Path.cwd())
USER_MODULES = {"dataset", "features", "model"}


def load_project(*names: str) -> tuple[str, Any, dict[str, ModuleType]]:
    """The project's package name, its settings and the machinery's modules `config`, `aliases` and `names`
    (dotted paths under ml_lifecycle._internal, or one of the user's modules dataset, features and model,
    keyed by their last part). The package is imported first: that binds the library to the project and
    points BentoML at its model store, as the CLI does."""
    package = tomllib.loads((ROOT / "settings.toml").read_text())["project"]["package"]
    importlib.import_module(package)
    modules = {
        name.rpartition(".")[2]: importlib.import_module(
            f"{package}.{name}" if name in USER_MODULES else f"ml_lifecycle._internal.{name}"
        )
        for name in ("config", "registry.aliases", *names)
    }
    return package, modules["config"].get_settings(), modules


def production_tag(settings: Any, aliases: ModuleType) -> str | None:
    """The production model's tag; None, after saying what to do, when nothing has been promoted."""
    try:
        return aliases.production_tag(settings)
    except LookupError as exc:
        log(f"error: this benchmark needs a production model: {exc}")
        return None


def run(main: Callable[[], int], *, needs_model: bool = False) -> None:
    """Outside a project: install one (and a production model when `needs_model`) and run this script in it.
    Inside: exit with main's code; an error it raises (RuntimeError: a server that did not start, a tool
    that is missing) is one line on stderr and exit code 1, never a missed goal."""
    if not os.environ.get(_project.IN_PROJECT) and not {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(_project.main(sys.argv[0], sys.argv[1:], needs_model=needs_model))
    try:
        sys.exit(main())
    except RuntimeError as exc:
        log(f"error: {exc}")
        sys.exit(1)
