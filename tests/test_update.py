"""`copier update` from earlier releases, as a user runs it on a project they have made their own.

Releases are tags in a throwaway clone (tests/releases.py): v0.9.0 (flat layout), v1.0.0 (stage layout),
v1.1.0 (the last with the machinery copied into the project) and the working tree as the newest. Projects are
updated within a major version with a changed answer, across the layout change and across the move of the
machinery into the library, where the migrations must keep the user's edits; and a fix in the library reaches
a project as a new pin plus `uv lock`.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Project, explain, package_of, project_env, subprocess_env
from releases import GIT_IDENTITY, Releases, commit, copy_release, git, make_releases, template_git
from test_adoption import fill_the_fences

# The generator's own Copier command line, run the way a user runs it (messages on the terminal).
COPIER = str(Path(sys.executable).with_name("copier"))
CONFLICT_MARKER = re.compile(r"^(<<<<<<<|>>>>>>>) ", re.MULTILINE)
NOT_PROJECT_FILES = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def update(project: Path, ref: str, *options: str) -> subprocess.CompletedProcess:
    """`copier update --trust --defaults --vcs-ref REF` in the project, as a user types it, from a home of
    its own: the state migration copies a namesake's models out of ~/bentoml, and this machine's own home
    may hold some (tests/test_state_migration.py covers that copy)."""
    command = [COPIER, "update", "--trust", "--defaults", "--vcs-ref", ref, *options]
    home = project.parent / "user-home"
    home.mkdir(exist_ok=True)
    uv_cache = os.environ.get("UV_CACHE_DIR") or str(Path.home() / ".cache" / "uv")
    env = subprocess_env(**GIT_IDENTITY, HOME=str(home), UV_CACHE_DIR=uv_cache)
    return subprocess.run(command, cwd=project, capture_output=True, text=True, env=env, timeout=300)


def project_files(root: Path) -> set[str]:
    """The project's own files, relative paths, without git's, the environment's and caches."""
    found = set()
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_PROJECT_FILES]
        found |= {(Path(folder) / name).relative_to(root).as_posix() for name in names}
    return found


def conflicts_left(project: Path) -> list[str]:
    """Every file an update left half-merged: unmerged in git's index, inline markers, or a .rej file."""
    unmerged = set(git(project, "diff", "--name-only", "--diff-filter=U").split())
    for path in project_files(project):
        text = (project / path).read_text(errors="ignore")
        if path.endswith(".rej") or CONFLICT_MARKER.search(text):
            unmerged.add(path)
    return sorted(unmerged)


def edit(path: Path, change: Callable[[str], str]) -> None:
    before = path.read_text()
    after = change(before)
    assert after != before, f"the edit of {path.name} changed nothing: the template moved on, update the test"
    path.write_text(after)


def setting(project: Path, key: str, value: str) -> None:
    """Change one `key = value` line of settings.toml, as a user does."""
    edit(
        project / "settings.toml", lambda text: re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
    )


def recorded_version(project: Path) -> str:
    found = re.search(r'^template_version = "(.*)"$', (project / "settings.toml").read_text(), re.M)
    assert found, "settings.toml records no template_version"
    return found.group(1)


def installed(root: Path, prefect_home: Path) -> Project:
    """`uv sync` the project, as a user does after an update."""
    project = Project(root, package_of(root), project_env("3.11", prefect_home, root.parent / "bentoml"))
    synced = project.run("uv", "sync")
    assert synced.returncode == 0, explain(synced)
    return project


def passes_its_own_checks(project: Project) -> None:
    """The project's own tests (stopping at the first failure), ruff and the formatter."""
    for command in (
        ["uv", "run", "pytest", "-x", "-q", "-p", "no:cacheprovider"],
        ["uv", "run", "ruff", "check", "."],
        ["uv", "run", "ruff", "format", "--check", "."],
    ):
        result = project.run(*command, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)}\n{explain(result)}"


# ---- Releases: a project records the release it came from (fast)


def test_a_project_copied_from_a_release_records_the_release_not_a_commit(releases, tmp_path):
    project = copy_release(releases, releases.previous, tmp_path / "project")
    assert recorded_version(project) == "v1.0.0"
    assert "_commit: v1.0.0" in (project / ".copier-answers.yml").read_text()


def test_the_newest_release_is_the_working_tree(releases, tmp_path):
    project = copy_release(releases, releases.current, tmp_path / "project")
    assert recorded_version(project) == releases.current
    changelog = (releases.path / "CHANGELOG.md").read_text()
    assert f"## [{releases.current.removeprefix('v')}]" in changelog


# ---- Within the stage layout: v1.0.0 -> newest, with the user's edits and a changed answer (slow)

USER_DATASET = """\
    if settings.data_path is None:
        frame = demo_frame(settings.data.task_type)
    else:
        frame = read_table(settings.data_path)
    # Our team never trusts this column: it is recomputed upstream with a different formula.
    return frame.drop(columns=["worst_fractal_dimension"], errors="ignore")
"""
USER_FEATURE = '        ("area_per_perimeter", Ratio("mean_area", "mean_perimeter")),\n'
USER_DEPENDENCY = '  "rich>=13",\n'


@dataclass(frozen=True)
class Updated:
    """A project updated from a release: its folder, what `copier update` said, and a fresh copy of the
    newest release with the same answers (within the layout, also with the same edits) to compare it with."""

    root: Path
    result: subprocess.CompletedProcess
    fresh: Path

    @property
    def package(self) -> Path:
        return self.root / "src" / package_of(self.root)

    @property
    def said(self) -> str:
        return self.result.stdout + self.result.stderr


def make_it_ours(root: Path) -> None:
    """Typical edits: code in the three fenced files, a dependency, a setting."""
    fill_the_fences(root / "src" / package_of(root), USER_DATASET, USER_FEATURE)
    edit(
        root / "pyproject.toml",
        lambda t: t.replace("dependencies = [\n", "dependencies = [\n" + USER_DEPENDENCY, 1),
    )
    setting(root, "model_family", '"extra_trees"')


@pytest.fixture(scope="module")
def updated_within_layout(releases, tmp_path_factory) -> Updated:
    home = tmp_path_factory.mktemp("update-within")
    root = copy_release(releases, releases.previous, home / "project", run_tasks=True)
    commit(root, "project from the template")
    assert (root / ".github").is_dir()
    make_it_ours(root)
    commit(root, "our data, feature, model family, dependency and setting")
    result = update(root, releases.current, "--data", "ci_provider=gitlab")
    assert result.returncode == 0, explain(result)
    fresh = copy_release(releases, releases.current, home / "fresh", ci_provider="gitlab")
    make_it_ours(fresh)  # the same edits on the newest release: where the update should arrive
    return Updated(root, result, fresh)


@pytest.mark.slow
def test_update_keeps_the_users_code_dependency_and_setting(updated_within_layout):
    updated = updated_within_layout
    assert "worst_fractal_dimension" in (updated.package / "dataset.py").read_text()
    assert USER_FEATURE in (updated.package / "features.py").read_text()
    assert '"extra_trees": ModelFamily(' in (updated.package / "model.py").read_text()
    assert USER_DEPENDENCY in (updated.root / "pyproject.toml").read_text()
    assert 'model_family = "extra_trees"' in (updated.root / "settings.toml").read_text()


@pytest.mark.slow
def test_untouched_files_take_the_new_release_and_edited_ones_keep_the_edits_on_it(updated_within_layout):
    """The updated project is the newest release copied fresh with the same answer and the same edits, to
    the byte; only its lock file is extra, and nothing of the old answer (.github/) is left."""
    updated = updated_within_layout
    ours, fresh = project_files(updated.root), project_files(updated.fresh)
    differ = [
        p for p in sorted(ours & fresh) if (updated.root / p).read_bytes() != (updated.fresh / p).read_bytes()
    ]
    assert (differ, sorted(fresh - ours), sorted(ours - fresh)) == ([], [], ["uv.lock"])


@pytest.mark.slow
def test_update_without_a_conflicting_edit_leaves_no_conflict(updated_within_layout):
    assert conflicts_left(updated_within_layout.root) == []


@pytest.mark.slow
def test_a_changed_answer_replaces_the_ci_files_and_the_release_is_recorded(updated_within_layout, releases):
    updated = updated_within_layout
    assert (updated.root / ".gitlab-ci.yml").is_file()
    assert not (updated.root / ".github").exists()
    assert "ci_provider: gitlab" in (updated.root / ".copier-answers.yml").read_text()
    assert recorded_version(updated.root) == releases.current


@pytest.mark.release
def test_the_updated_project_installs_and_passes_its_own_tests(updated_within_layout, prefect_home):
    passes_its_own_checks(installed(updated_within_layout.root, prefect_home))


# ---- A conflicting edit (fast: nothing installed)


def test_a_line_both_the_user_and_the_update_changed_is_an_inline_conflict_named_by_file(releases, tmp_path):
    root = copy_release(releases, releases.previous, tmp_path / "project")
    commit(root, "project from the template")
    setting(root, "n_trials", "50")  # the user's value ...
    commit(root, "more trials")
    result = update(root, releases.current, "--data", "n_trials=30")  # ... and a new answer for the same line
    assert result.returncode == 0, explain(result)  # Copier reports conflicts by leaving them, not by failing
    assert conflicts_left(root) == ["settings.toml"]
    settings = (root / "settings.toml").read_text()
    assert re.search(
        r"<<<<<<< before updating\nn_trials = 50\n(.*\n)*?=======\nn_trials = 30\n>>>>>>> after updating",
        settings,
    ), settings


# ---- Across the layout change: v0.9.0 (flat) -> newest, the migration keeps the user's edits (slow)

# A module of the user's own that imports flat-layout modules: it must be named, since it breaks on import.
USER_MODULE = (
    "lab_report.py",
    '"""Our weekly lab report."""\n\nfrom .data import load_dataset\nfrom .registry import latest_tag\n\n\n'
    "def report(settings) -> str:\n"
    '    return f"{latest_tag(settings)}: {len(load_dataset(settings).frame)} rows"\n',
)
# The test the user wrote for their rule, in the flat layout's tests/test_data.py.
USER_TEST = """

def test_our_lab_rule_keeps_rows_with_a_radius(csv_settings):
    assert (load_dataset(csv_settings).frame["mean_radius"] > 0).all()
"""
USER_DATA_LINE = '    frame = frame[frame["mean_radius"] > 0]  # our lab: rows without a radius are broken\n'
OLD_SEARCH_SPACE = '"n_estimators", 20, 200'
USER_SEARCH_SPACE = '"n_estimators", 50, 400'


def edit_the_flat_layout(root: Path) -> None:
    """What a user of v0.9.0 changed: a rule in data.py's loading and its test, the forest's search space
    in model.py, and a module of their own."""
    package = root / "src" / package_of(root)
    edit(
        package / "data.py",
        lambda t: t.replace(
            "    return validate(frame, target,", USER_DATA_LINE + "    return validate(frame, target,", 1
        ),
    )
    edit(package / "model.py", lambda t: t.replace(OLD_SEARCH_SPACE, USER_SEARCH_SPACE, 1))
    name, code = USER_MODULE
    (package / name).write_text(code)
    edit(root / "tests" / "test_data.py", lambda t: t + USER_TEST)


@pytest.fixture(scope="module")
def updated_across_layout(releases, tmp_path_factory) -> Updated:
    home = tmp_path_factory.mktemp("update-across")
    root = copy_release(releases, releases.flat_layout, home / "project", run_tasks=True)
    commit(root, "project from the template")
    edit_the_flat_layout(root)
    commit(root, "our data rule and search space")
    result = update(root, releases.current)
    assert result.returncode == 0, explain(result)
    fresh = copy_release(releases, releases.current, home / "fresh")
    return Updated(root, result, fresh)


@pytest.mark.slow
def test_the_migration_says_where_each_edited_module_goes_and_keeps_its_code(updated_across_layout, releases):
    updated = updated_across_layout
    pkg = f"src/{updated.package.name}"
    assert f"Stage layout migration ({releases.flat_layout} -> {releases.current})" in updated.said
    notes = (updated.root / "MIGRATING.md").read_text()
    for path, goes_to, users_code in (
        (f"{pkg}/data.py", "dataset.py (load_frame", USER_DATA_LINE.strip()),
        (f"{pkg}/model.py", "model.py (MODEL_FAMILIES", USER_SEARCH_SPACE),
        ("tests/test_data.py", "tests/test_dataset.py", USER_TEST.strip()),
    ):
        saved = f"migration/v1.0.0/{path}.txt"
        [line] = [line for line in updated.said.splitlines() if line.startswith(f"- {path}:")]
        assert saved in line and goes_to in line, line
        assert line in notes
        assert users_code in (updated.root / saved).read_text()
    [imports] = [line for line in notes.splitlines() if line.startswith(f"- {pkg}/{USER_MODULE[0]}:")]
    assert "data -> dataset.py" in imports and "registry -> ml_lifecycle (the library" in imports, imports
    assert len(re.findall(r"^- ", notes, re.M)) == 4, notes  # only the files the user changed or wrote


@pytest.mark.slow
def test_the_migration_runs_only_for_projects_from_before_the_stage_layout(
    updated_across_layout, updated_within_layout
):
    assert "Stage layout migration" in updated_across_layout.said
    assert "Stage layout migration" not in updated_within_layout.said
    assert not (updated_within_layout.root / "MIGRATING.md").exists()


@pytest.mark.slow
def test_no_flat_layout_module_is_left_and_the_package_is_the_new_one(updated_across_layout):
    updated = updated_across_layout
    package = f"src/{updated.package.name}/"
    ours = {p for p in project_files(updated.root) if p.startswith(package)}
    fresh = {p for p in project_files(updated.fresh) if p.startswith(package)}
    assert ours == fresh | {package + USER_MODULE[0]}  # the user's own module stays where they put it
    model = f"{package}model.py"
    assert (updated.root / model).read_text() == (updated.fresh / model).read_text()
    assert conflicts_left(updated.root) == []


@pytest.mark.release
def test_the_migrated_project_installs_and_passes_its_own_tests(updated_across_layout, prefect_home):
    passes_its_own_checks(installed(updated_across_layout.root, prefect_home))


# ---- Bad input: a clear message, nothing changed (fast)


def test_updating_a_project_with_uncommitted_changes_is_refused(releases, tmp_path):
    root = copy_release(releases, releases.previous, tmp_path / "project")
    commit(root, "project from the template")
    setting(root, "n_trials", "50")
    result = update(root, releases.current)
    assert result.returncode != 0
    assert "Destination repository is dirty; cannot continue. Please commit or stash your local changes" in (
        result.stderr
    )
    assert "n_trials = 50" in (root / "settings.toml").read_text()


def test_updating_a_folder_this_template_did_not_generate_is_refused(releases, tmp_path):
    root = tmp_path / "elsewhere"
    root.mkdir()
    (root / "README.md").write_text("Not a project from the template\n")
    commit(root, "someone else's project")
    result = update(root, releases.current)
    assert result.returncode != 0
    assert "Cannot update because cannot obtain old template references from `.copier-answers.yml`" in (
        result.stderr
    )
    assert project_files(root) == {"README.md"}


# ---- Across the move into the library: v1.1.0 -> newest, the migration keeps the user's edits (slow)

# The user's loader also raises the template's error type, imported from the machinery the way 1.x allowed.
USER_CHECK = (
    "    from .tables import DataError  # the template's error for data that cannot be used\n\n"
    "    if frame.empty:\n"
    '        raise DataError("our loader found no rows")\n'
)
USER_DATASET_1X = USER_DATASET.replace("    # Our team never", USER_CHECK + "    # Our team never", 1)
MACHINERY_EDIT = (
    "training/tuning.py",
    "FINISHED = (",
    "# Our team: pruned trials count as finished.\nFINISHED = (",
)


@pytest.fixture(scope="module")
def updated_into_library(releases, tmp_path_factory) -> Updated:
    home = tmp_path_factory.mktemp("update-library")
    root = copy_release(releases, releases.copied_machinery, home / "project", run_tasks=True)
    commit(root, "project from the template")
    package = root / "src" / package_of(root)
    fill_the_fences(package, USER_DATASET_1X, USER_FEATURE)
    module, before, after = MACHINERY_EDIT
    edit(package / module, lambda t: t.replace(before, after, 1))
    commit(root, "our data, feature, model family, and a tweak of the tuning")
    result = update(root, releases.current)
    assert result.returncode == 0, explain(result)
    fresh = copy_release(releases, releases.current, home / "fresh")
    return Updated(root, result, fresh)


@pytest.mark.slow
def test_the_library_migration_leaves_the_thin_package_with_the_users_code(updated_into_library):
    updated = updated_into_library
    package = f"src/{updated.package.name}/"
    ours = {p for p in project_files(updated.root) if p.startswith(package)}
    assert ours == {p for p in project_files(updated.fresh) if p.startswith(package)}
    assert not [p for p in (updated.package).iterdir() if p.is_dir() and p.name != "__pycache__"]
    dataset = (updated.package / "dataset.py").read_text()
    assert "from ml_lifecycle import Settings, normalize_columns, read_table\n" in dataset
    assert "    from ml_lifecycle import DataError  # the template's error" in dataset
    assert 'raise DataError("our loader found no rows")' in dataset and "worst_fractal_dimension" in dataset
    assert not re.search(r"from \.(config|tables) ", dataset), dataset
    assert USER_FEATURE in (updated.package / "features.py").read_text()
    assert '"extra_trees": ModelFamily(' in (updated.package / "model.py").read_text()
    assert conflicts_left(updated.root) == []


@pytest.mark.slow
def test_the_changed_machinery_module_is_saved_and_named_and_the_untouched_ones_are_gone(
    updated_into_library, releases
):
    updated = updated_into_library
    module, _, changed = MACHINERY_EDIT
    path = f"src/{updated.package.name}/{module}"
    saved = f"migration/v2.0.0/{path}.txt"
    assert changed in (updated.root / saved).read_text()
    assert f"Library migration ({releases.copied_machinery} -> {releases.current})" in updated.said
    notes = (updated.root / "MIGRATING.md").read_text()
    [line] = [line for line in notes.splitlines() if line.startswith("- ")]  # the one file the user changed
    assert (
        line.startswith(f"- {path}: your version is in {saved}")
        and f"ml_lifecycle/_internal/{module}" in line
    )
    assert line in updated.said
    assert sorted(p for p in project_files(updated.root) if p.startswith("migration/")) == [saved]
    tests = {p for p in project_files(updated.root) if p.startswith("tests/")}
    assert tests == {p for p in project_files(updated.fresh) if p.startswith("tests/")}


@pytest.mark.slow
def test_the_project_updated_into_the_library_trains(updated_into_library, prefect_home):
    root = updated_into_library.root
    project = Project(root, package_of(root), project_env("3.11", prefect_home, root.parent / "bentoml"))
    for command in (["uv", "lock"], ["uv", "sync"]):
        done = project.run(*command)
        assert done.returncode == 0, f"{' '.join(command)}\n{explain(done)}"
    trained = project.cli("train", "--n-trials", "2")
    assert trained.returncode == 0, explain(trained)


# ---- The library migration's edits of the user's files (fast: no copy)


@pytest.fixture
def library_migration(monkeypatch):
    """hooks/migrations/library.py as a module (Copier runs it as a script beside stage_layout.py)."""
    monkeypatch.syspath_prepend(str(REPO / "hooks" / "migrations"))
    return importlib.import_module("library")


def test_imports_of_public_names_point_at_the_library_and_the_others_are_named(library_migration, tmp_path):
    module = tmp_path / "report.py"
    module.write_text(
        "from .config import Settings, get_settings as settings_of  # ours\n"
        "from churn.tables import (\n    read_table,\n    DataError,\n)\n"
        "from .training.validation import check_frame\n"
        "from .config import PACKAGE\n"
        "from .configuration import ours\n"
        "from .flows import train\n"
        "\n\ndef load():\n    from .tables import normalize_columns\n"
    )
    left = library_migration.rewrite_imports(module, "churn")
    assert module.read_text() == (
        "from ml_lifecycle import Settings, get_settings as settings_of  # ours\n"
        "from ml_lifecycle import DataError, read_table\n"
        "from .training.validation import check_frame\n"
        "from .config import PACKAGE\n"
        "from .configuration import ours\n"
        "from .flows import train\n"
        "\n\ndef load():\n    from ml_lifecycle import normalize_columns\n"
    )
    assert left == ["config", "training.validation"]


def test_dependencies_the_user_added_stay_beside_the_pin(library_migration, tmp_path, monkeypatch):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "pyproject.toml").write_text(
        'dependencies = [\n  "bentoml>=1.4",\n  "pandas>=2.2,<3",\n]\n'
    )
    pin = '  "ml-lifecycle @ git+https://git.example.com/t@0123#subdirectory=runtime",\n'
    (tmp_path / "pyproject.toml").write_text(
        "dependencies = [\n<<<<<<< before updating\n"
        '  "rich>=13",  # ours\n  "bentoml>=1.4",\n  "pandas>=2.3,<3",\n'
        f"=======\n  # the machinery\n{pin}>>>>>>> after updating\n]\n"
        "[tool.x]\n<<<<<<< before updating\nkey = 1\n=======\nkey = 2\n>>>>>>> after updating\n"
    )
    monkeypatch.chdir(tmp_path)
    assert library_migration.keep_added_dependencies(tmp_path / "old") == ["rich>=13", "pandas>=2.3,<3"]
    assert (tmp_path / "pyproject.toml").read_text() == (
        f'dependencies = [\n  "rich>=13",  # ours\n  "pandas>=2.3,<3",\n  # the machinery\n{pin}]\n'
        "[tool.x]\n<<<<<<< before updating\nkey = 1\n=======\nkey = 2\n>>>>>>> after updating\n"
    )


# ---- A fix in the library reaches a project as a new pin plus `uv lock` (slow: one project installed)

FIX_MODULE = "runtime/src/ml_lifecycle/pin_probe.py"
FIX_CODE = 'def fixed() -> str:\n    """A fix made after the project was copied."""\n    return "fixed"\n'
SEES_THE_FIX = "from ml_lifecycle.pin_probe import fixed; print(fixed())"
PIN = re.compile(
    r"ml-lifecycle @ git\+file://localhost(?P<path>/\S+)@(?P<commit>[0-9a-f]{40})#subdirectory=runtime"
)


def pinned(project: Path) -> re.Match[str]:
    found = PIN.search((project / "pyproject.toml").read_text())
    assert found, "pyproject.toml has no ml-lifecycle pin"
    return found


@pytest.mark.slow
def test_a_fix_in_the_library_reaches_the_project_through_its_pin_and_uv_lock(tmp_path, prefect_home):
    template = make_releases(tmp_path / "template").path
    copied_from = template_git("rev-parse", "HEAD", cwd=template).strip()
    root = copy_release(Releases(template, "HEAD"), "HEAD", tmp_path / "project", run_tasks=True)
    assert (root / "uv.lock").is_file(), "the copy task locks the project"
    commit(root, "project from the template")
    assert (pinned(root)["path"], pinned(root)["commit"]) == (str(template), copied_from)
    project = installed(root, prefect_home)
    before = project.run("uv", "run", "python", "-c", SEES_THE_FIX)
    assert before.returncode != 0 and "No module named 'ml_lifecycle.pin_probe'" in before.stderr

    (template / FIX_MODULE).write_text(FIX_CODE)
    template_git("add", FIX_MODULE, cwd=template)
    template_git("commit", "--quiet", "-m", "ml_lifecycle: the fix", cwd=template)
    fixed_at = template_git("rev-parse", "HEAD", cwd=template).strip()

    result = update(root, "HEAD")
    assert result.returncode == 0, explain(result)
    assert pinned(root)["commit"] == fixed_at
    stale = project.run("uv", "sync", "--locked")
    assert stale.returncode != 0, "uv.lock still names the old commit: `uv lock` is the step that moves it"
    for command in (["uv", "lock"], ["uv", "sync", "--locked"]):
        done = project.run(*command)
        assert done.returncode == 0, f"{' '.join(command)}\n{explain(done)}"
    assert fixed_at in (root / "uv.lock").read_text()
    after = project.run("uv", "run", "python", "-c", SEES_THE_FIX)
    assert after.returncode == 0 and after.stdout.strip() == "fixed", explain(after)
