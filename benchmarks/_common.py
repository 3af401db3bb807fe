"""What the project's benchmark scripts share: logging to stderr, ratios, leftover processes, exit codes.

Each benchmark runs as a script (`uv run python benchmarks/<name>.py`), so this folder is on sys.path and
`from _common import ...` finds this module.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]


def load_project(*names: str) -> tuple[str, Any, dict[str, ModuleType]]:
    """The project's package name, its settings and its modules `config`, `aliases` and `names` (dotted
    paths inside the package, keyed by their last part). The package itself is imported first: that points
    BentoML at the project's model store, as the CLI does."""
    package = tomllib.loads((ROOT / "settings.toml").read_text())["project"]["package"]
    importlib.import_module(package)
    modules = {
        name.rpartition(".")[2]: importlib.import_module(f"{package}.{name}")
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


def log(message: str) -> None:
    """Progress goes to stderr: stdout's last line is the benchmark's JSON."""
    print(message, file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def kill_leftovers(marker: str, run_id: str) -> int:
    """Stop every process whose environment carries `marker=run_id` (servers, workers and flow runs start
    sessions of their own, which stopping a process group does not reach); returns how many there were."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(marker) == run_id:
                proc.terminate()
                found.append(proc)
    _, alive = psutil.wait_procs(found, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(found)


def clean_up(marker: str, run_id: str, work: Path, keep: bool) -> None:
    """After a run: stop what is left of it, and remove its work folder unless asked to keep it."""
    leftovers = kill_leftovers(marker, run_id)
    if leftovers:
        log(f"stopped {leftovers} leftover process(es)")
    if keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def run(main: Callable[[], int]) -> None:
    """Exit with main's code; an error it raises (RuntimeError: a server that did not start, a tool that
    is missing) is one line on stderr and exit code 1, never a missed goal."""
    try:
        sys.exit(main())
    except RuntimeError as exc:
        log(f"error: {exc}")
        sys.exit(1)
