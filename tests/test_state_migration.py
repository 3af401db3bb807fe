"""Updating a project made before state moved into .state/: hooks/migrations/project_state.py moves the old
folders there and copies the project's models and production alias out of ~/bentoml, leaving a namesake's
store and the user's own choices alone. Fast: a project folder and a home directory made by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "hooks" / "migrations" / "project_state.py"
PACKAGE = "churn"


@pytest.fixture
def old_project(tmp_path) -> tuple[Path, Path]:
    """A project as the update leaves it (settings.toml at the new defaults, the user's reports_dir kept) with
    its state where the old release put it, and a home whose ~/bentoml holds its models and another's."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    (project / "settings.toml").write_text(
        f'[project]\nname = "Churn"\npackage = "{PACKAGE}"\n\n[registry]\nbentoml_home = ""\n\n'
        '[monitoring]\nreports_dir = "reports"\n'
    )
    for path in (".optuna/studies.db", "logs/requests.jsonl", ".deploy/serve.json", "reports/drift.html"):
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(path)
    store = home / "bentoml"
    for package in (PACKAGE, "other"):
        (store / "models" / package / "v1").mkdir(parents=True)
        (store / "models" / package / "v1" / "model.yaml").write_text(package)
        (store / "models" / package / "latest").write_text("v1")
        (store / "aliases").mkdir(exist_ok=True)
        record = {"history": [{"tag": f"{package}:v1"}]}
        (store / "aliases" / f"{package}.json").write_text(json.dumps(record))
    return project, home


def migrate(project: Path, home: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=project,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_old_state_moves_into_the_project_and_its_models_are_copied(old_project):
    project, home = old_project
    result = migrate(project, home)
    assert result.returncode == 0, result.stderr
    state = project / ".state"
    assert (state / "optuna" / "studies.db").read_text() == ".optuna/studies.db"
    assert (state / "logs" / "requests.jsonl").read_text() == "logs/requests.jsonl"
    assert (state / "deploy" / "serve.json").read_text() == ".deploy/serve.json"
    assert not (project / ".optuna").exists() and not (project / "logs").exists()
    assert (state / "bentoml" / "models" / PACKAGE / "v1" / "model.yaml").read_text() == PACKAGE
    assert (state / "bentoml" / "aliases" / f"{PACKAGE}.json").exists()
    assert "copied the models and the production alias of churn" in result.stderr


def test_a_namesakes_store_and_the_users_own_choices_stay_as_they_were(old_project):
    project, home = old_project
    migrate(project, home)
    assert (home / "bentoml" / "models" / PACKAGE / "v1").is_dir(), "the old store is copied, never moved"
    assert (home / "bentoml" / "aliases" / f"{PACKAGE}.json").exists()
    assert not (project / ".state" / "bentoml" / "models" / "other").exists()
    assert (project / "reports" / "drift.html").exists(), "reports_dir was set by the user: it stays"
    assert not (project / ".state" / "reports").exists()


def test_running_it_again_changes_nothing(old_project):
    project, home = old_project
    migrate(project, home)
    (project / ".state" / "bentoml" / "aliases" / f"{PACKAGE}.json").write_text("promoted since")
    again = migrate(project, home)
    assert again.returncode == 0 and again.stderr == ""
    assert (project / ".state" / "bentoml" / "aliases" / f"{PACKAGE}.json").read_text() == "promoted since"


def test_an_exported_store_is_kept_and_nothing_is_copied(old_project):
    project, home = old_project
    result = migrate(project, home, BENTOML_HOME=str(home / "bentoml"))
    assert "BENTOML_HOME is exported" in result.stderr
    assert not (project / ".state" / "bentoml").exists()


def test_a_conflict_the_update_left_in_settings_does_not_stop_the_migration(old_project):
    """An update that changed a line the user changed too leaves inline markers in settings.toml (invalid
    TOML); the migration reads the template's side, moves the state, and leaves the conflict to the user."""
    project, home = old_project
    settings = project / "settings.toml"
    conflict = "<<<<<<< before updating\nn_trials = 50\n=======\nn_trials = 30\n>>>>>>> after updating\n"
    settings.write_text(settings.read_text().replace("[registry]\n", f"[registry]\n{conflict}"))
    result = migrate(project, home)
    assert result.returncode == 0, result.stderr
    assert (project / ".state" / "optuna" / "studies.db").is_file()
    assert (project / ".state" / "bentoml" / "models" / PACKAGE / "v1" / "model.yaml").is_file()
    assert conflict in settings.read_text()
