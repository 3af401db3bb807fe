"""The generator's own flows, run as a platform team would, against a real Prefect server: `scaffold` makes a
project that installs and passes its tests, `update_fleet` updates three projects of the previous release
(one with a conflicting edit) and reports broken entries without stopping. What they leave in the Prefect
UI, their artifacts, is read back through the server's API.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, explain, free_port, run, started, subprocess_env, uv_python
from releases import Releases, commit, copy_release, git
from test_update import edit

from flows.projects import recorded_answers

pytestmark = pytest.mark.slow

# The flows run a fast slice of each project's suite: test_project.py and test_matrix.py run whole suites of
# fresh projects, test_update.py of updated ones.
PYTEST_SLICE = "-x -q -p no:cacheprovider tests/test_contract.py tests/test_model.py"
SCAFFOLD_ANSWERS = {"task_type": "regression", "model_family": "linear", "python_version": "3.12"}


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """`prefect server start` from the generator's environment (SQLite), on 127.0.0.1; yields its API URL."""
    home = tmp_path_factory.mktemp("generator-prefect")
    port = free_port()
    env = subprocess_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    prefect = str(Path(sys.executable).with_name("prefect"))  # the generator's own, as generator_flow
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with started(
        command, cwd=REPO, env=env, log=home / "server.log", ready_url=f"http://127.0.0.1:{port}/api/health"
    ):
        yield f"http://127.0.0.1:{port}/api"


def generator_flow(api: str, module: str, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """`python -m flows.<module> ...` with the generator's interpreter, reporting to the test's server. Not
    `uv run`: under a test's UV_PYTHON (a project's Python version) uv rebuilt the generator's own
    virtualenv for that version, under the running tests."""
    env = subprocess_env(PREFECT_API_URL=api)
    return run([sys.executable, "-m", f"flows.{module}", *args], cwd=REPO, env=env, timeout=timeout)


def artifact(api: str, key: str) -> dict:
    """The newest artifact with `key`, as the Prefect UI shows it."""
    found = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}, timeout=30)
    found.raise_for_status()
    assert found.json(), f"no {key!r} artifact on the server"
    return max(found.json(), key=lambda a: a["created"])


def copy_previous_release(releases: Releases, dest: Path) -> Path:
    """A project as a user made it from the previous release: copied with its tasks (uv lock), committed."""
    copy_release(releases, releases.previous, dest, run_tasks=True)
    commit(dest, "Project from the template")
    return dest


def replace(old: str, new: str):
    return lambda text: text.replace(old, new, 1)


@pytest.fixture(scope="module")
def fleet(
    releases, prefect_api, tmp_path_factory
) -> tuple[subprocess.CompletedProcess, dict[str, dict], dict]:
    """Three projects of the previous release (untouched, edited in the user's fence, edited where the new
    release also changes) and three broken entries, updated as one fleet. Returns the command's result, the
    artifact's rows by project and the entries by role."""
    root = tmp_path_factory.mktemp("fleet")
    untouched = copy_previous_release(releases, root / "untouched")
    edited = copy_previous_release(releases, root / "edited")
    loader = "    if settings.data_path is None:"
    edit(edited / "src/my_ml_project/dataset.py", replace(loader, "    # Our loader.\n" + loader))
    commit(edited, "Our loader")
    conflicting = copy_previous_release(releases, root / "conflicting")
    # A line the new release changes too: the version the template records.
    ours = replace(f'template_version = "{releases.previous}"', 'template_version = "ours"')
    edit(conflicting / "settings.toml", ours)
    commit(conflicting, "Our own version string")
    dirty = copy_previous_release(releases, root / "dirty")
    edit(dirty / "settings.toml", replace("test_size = 0.2", "test_size = 0.25"))  # not committed
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "README.md").write_text("not a generated project\n")
    commit(foreign, "Someone else's project")
    entries = {
        "untouched": untouched,
        "edited": edited,
        "conflicting": conflicting,
        "dirty": dirty,
        "foreign": foreign,
        "missing": root / "missing",
        # Shaped like a git option: git must get it as the URL to clone (`--` before it), not run the command.
        "option_like": f"--upload-pack=touch {root / 'the-command-ran'};x://host/repo",
    }
    result = generator_flow(
        prefect_api,
        "update_fleet",
        "--vcs-ref",
        releases.current,
        "--workspace",
        str(root / "workspace"),
        "--pytest-args",
        PYTEST_SLICE,
        "--",
        *map(str, entries.values()),
    )
    rows = json.loads(artifact(prefect_api, "fleet-update")["data"])
    return result, {row["project"]: row for row in rows}, {role: str(path) for role, path in entries.items()}


def test_scaffold_makes_a_project_that_passes_its_tests_and_reports_it(prefect_api, tmp_path):
    dest = tmp_path / "scaffolded"
    data = [arg for key, value in SCAFFOLD_ANSWERS.items() for arg in ("--data", f"{key}={value}")]
    with uv_python(SCAFFOLD_ANSWERS["python_version"]):
        result = generator_flow(prefect_api, "scaffold", str(dest), *data, "--pytest-args", PYTEST_SLICE)
    assert result.returncode == 0, explain(result)
    assert {k: recorded_answers(dest)[k] for k in SCAFFOLD_ANSWERS} == SCAFFOLD_ANSWERS
    # The project's Python version stayed the project's: the generator's own environment is untouched.
    venv = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    assert f"version_info = {platform.python_version()}" in venv
    report = artifact(prefect_api, "scaffold-result")["data"]
    assert f"| project | {dest} |" in report
    assert "| tests_passed | True |" in report
    assert " passed" in report and " failed" not in report


def test_a_bad_answer_fails_the_scaffold_naming_the_question(prefect_api, tmp_path):
    result = generator_flow(prefect_api, "scaffold", str(tmp_path / "bad"), "--data", "n_trials=0")
    assert result.returncode != 0
    assert "n_trials must be between 1 and 10000" in result.stderr + result.stdout


@pytest.mark.release
def test_clean_projects_are_updated_on_a_branch_and_pass_their_tests(fleet, releases):
    _, rows, entries = fleet
    for role in ("untouched", "edited"):
        row = rows[entries[role]]
        assert row["status"] == "updated", row
        assert (row["version_before"], row["version_after"]) == (releases.previous, releases.current)
        assert " passed" in row["tests"] and "failed" not in row["tests"], row
        where = Path(row["where"])
        assert git(where, "branch", "--show-current").strip() == row["branch"]
        assert git(where, "status", "--porcelain") == ""
    edited = Path(rows[entries["edited"]]["where"])
    assert "# Our loader." in (edited / "src/my_ml_project/dataset.py").read_text()


@pytest.mark.release
def test_the_users_own_checkout_is_left_as_it_was(fleet, releases):
    _, _, entries = fleet
    for role in ("untouched", "edited", "conflicting"):
        project = Path(entries[role])
        assert recorded_answers(project)["_commit"] == releases.previous
        assert git(project, "status", "--porcelain") == ""


@pytest.mark.release
def test_a_conflicting_edit_is_reported_with_its_file_and_left_for_a_person(fleet):
    result, rows, entries = fleet
    row = rows[entries["conflicting"]]
    assert row["status"] == "conflicts" and row["conflicts"] == "settings.toml", row
    assert "<<<<<<< before updating" in (Path(row["where"]) / "settings.toml").read_text()
    assert result.returncode != 0 and entries["conflicting"] in result.stderr


@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("dirty", "has uncommitted changes (settings.toml): commit or stash them"),
        ("foreign", "has no .copier-answers.yml: it was not generated by a Copier template"),
        ("missing", "does not exist: check the path"),
        ("option_like", "fatal: protocol '--upload-pack=touch "),
    ],
)
@pytest.mark.release
def test_a_broken_entry_is_a_row_with_its_reason_and_the_others_go_on(fleet, role, message):
    _, rows, entries = fleet
    row = rows[entries[role]]
    assert row["status"] == "error" and message in row["tests"], row
    assert sum(r["status"] == "updated" for r in rows.values()) == 2
    assert not (Path(entries["dirty"]).parent / "the-command-ran").exists()
