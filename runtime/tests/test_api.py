"""The public API is what runtime/API.md lists, no more and no less: a name added to the code but not to the
page (or the other way round) fails here, so every change to the promise is a visible change to the page."""

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import ml_lifecycle
from ml_lifecycle._internal.config import ENV_PREFIX
from ml_lifecycle._internal.project import bound

API = Path(__file__).resolve().parents[1] / "API.md"


def documented() -> dict[str, set[str]]:
    """`## \\`module\\`` headings and the `- \\`name\\`` items under them."""
    names: dict[str, set[str]] = {}
    module = None
    for line in API.read_text().splitlines():
        if heading := re.fullmatch(r"## `([\w.]+)`", line):
            module = heading.group(1)
            names[module] = set()
        elif line.startswith("## "):
            module = None
        elif module and (item := re.match(r"- `(\w+)`", line)):
            names[module].add(item.group(1))
    return names


def test_every_public_module_lists_exactly_the_names_on_the_page():
    pages = documented()
    public = {"ml_lifecycle"} | {
        f"ml_lifecycle.{info.name}"
        for info in pkgutil.iter_modules(ml_lifecycle.__path__)
        if not info.name.startswith("_")
    }
    assert set(pages) == public
    for name, listed in pages.items():
        module = importlib.import_module(name)
        assert set(module.__all__) == listed, name
        for attribute in listed:
            if (name, attribute) == ("ml_lifecycle.service", "Predictor"):
                continue  # built from the production model when asked for: serving/test_service_imports.py
            assert getattr(module, attribute) is not None, f"{name}.{attribute}"


def test_importing_the_library_binds_nothing_and_reads_no_settings():
    script = "import ml_lifecycle, sys; print(sorted(m for m in sys.modules if m.startswith('ml_lifecycle')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['ml_lifecycle']"


def import_the_project(script: str, **env: str) -> list[str]:
    """Run `script` after importing the project's package and service modules in a fresh interpreter, with
    no BENTOML_HOME exported; its printed lines."""
    project = bound()
    environ = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"}
    environ |= {"PYTHONPATH": str(project.directory.parent), **env}
    imports = f"import os, sys, ml_lifecycle.service, {project.package}, {project.package}.service\n"
    result = subprocess.run(
        [sys.executable, "-c", imports + script], env=environ, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_importing_the_project_reads_no_settings_and_exports_no_store():
    """Binding records the package only: the settings, and BENTOML_HOME with them, wait for their first
    use."""
    script = "print('BENTOML_HOME' in os.environ, 'ml_lifecycle._internal.config' in sys.modules)"
    assert import_the_project(script) == ["False False"]


def test_the_project_imports_with_unusable_settings_and_says_so_when_they_are_read(tmp_path):
    broken = tmp_path / "settings.toml"
    broken.write_text("[project\nname = 'x'\n")
    script = (
        "from ml_lifecycle import get_settings, SettingsError\n"
        "try:\n    get_settings()\nexcept SettingsError as e:\n    print(e)"
    )
    [problem] = import_the_project(script, **{f"{ENV_PREFIX}SETTINGS_FILE": str(broken)})
    assert problem.startswith(f"{broken}: not valid TOML")


def test_the_event_names_on_the_page_are_the_settings_own():
    settings = ml_lifecycle.get_settings()
    on_page = set(re.findall(r"^- `<package>(\.[\w.]+)`$", API.read_text(), re.MULTILINE))
    events = [settings.drift_event, settings.performance_event]
    events += [settings.promoted_event, settings.rolled_back_event]
    assert {event.removeprefix(settings.project.package) for event in events} == on_page
