"""The project's pin on the library: hooks/render/pin.jinja turns every template source Copier accepts into a
PEP 508 requirement, and hooks/post_copy.py refuses, in one line, a pin that can never install (a relative
template path; a commit only Copier's copy of a dirty working tree had). Fast: nothing is installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from conftest import REPO, explain
from packaging.requirements import Requirement
from releases import make_releases

COPIER = str(Path(sys.executable).with_name("copier"))
PIN_CALL = (
    "{% from 'hooks/render/pin.jinja' import library_requirement with context %}{{ library_requirement() }}"
)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TASK_FAILED = "returned non-zero exit status"  # Copier's report of a failed task, after the task's own line


def environment() -> jinja2.Environment:
    """Plain Jinja with the template's StrictUndefined: the macro needs nothing of Copier's."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPO)), undefined=jinja2.StrictUndefined)


def requirement(source: str, commit: str = COMMIT) -> str:
    template = environment().from_string(PIN_CALL)
    return template.render(_copier_answers={"_src_path": source}, _copier_conf={"vcs_ref_hash": commit})


# Each source as a user types it to `copier copy`, and the URL the pin must name.
SOURCES = {
    "/srv/templates/ml": "git+file://localhost/srv/templates/ml",
    "/srv/templates/ml/": "git+file://localhost/srv/templates/ml",
    "/srv/my templates/ml@2": "git+file://localhost/srv/my%20templates/ml%402",
    "file:///srv/templates/ml": "git+file://localhost/srv/templates/ml",
    "file://localhost/srv/templates/ml": "git+file://localhost/srv/templates/ml",
    "git+file:///srv/templates/ml": "git+file://localhost/srv/templates/ml",
    "gh:acme/ml-template": "git+https://github.com/acme/ml-template",
    "gl:acme/group/ml-template": "git+https://gitlab.com/acme/group/ml-template",
    "https://github.com/acme/ml-template.git": "git+https://github.com/acme/ml-template.git",
    "git@github.com:acme/ml-template.git": "git+ssh://git@github.com/acme/ml-template.git",
    "ssh://git@git.example.com:2222/acme/ml.git": "git+ssh://git@git.example.com:2222/acme/ml.git",
    "git+https://git.example.com/acme/ml.git": "git+https://git.example.com/acme/ml.git",
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_source_form_becomes_a_requirement_uv_and_bentoml_read(source):
    line = requirement(source)
    parsed = Requirement(line)  # what uv, hatchling and bentoml parse [project].dependencies with (PEP 508)
    assert parsed.name == "ml-lifecycle"
    assert parsed.url == f"{SOURCES[source]}@{COMMIT}#subdirectory=runtime", line
    assert "file:///" not in line, "BentoML turns file:/// into file:/, which git reads as a host"


def test_a_requirement_without_a_commit_is_not_rendered_silently():
    with pytest.raises(jinja2.UndefinedError):
        environment().from_string(PIN_CALL).render(
            _copier_answers={"_src_path": "/srv/templates/ml"}, _copier_conf={}
        )


# ---- post_copy refuses a pin that cannot install, with one line (Copier then removes the new folder)


def copy(source: str, dst: Path, *, cwd: Path) -> subprocess.CompletedProcess:
    """`copier copy --trust --defaults` with its task, as a user types it."""
    command = [COPIER, "copy", "--trust", "--defaults", "--vcs-ref", "HEAD", source, str(dst)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def render_without_tasks(template: Path, project: Path) -> Path:
    """The project as Copier renders it, without the task (its pin check and `uv lock` are what is tested)."""
    command = [COPIER, "copy", "--trust", "--defaults", "--skip-tasks", "--vcs-ref", "HEAD"]
    rendered = subprocess.run(
        [*command, str(template), str(project)], capture_output=True, text=True, timeout=300, check=False
    )
    assert rendered.returncode == 0, explain(rendered)
    return project


def refusal(result: subprocess.CompletedProcess) -> str:
    """The task's one line: what stderr says just before Copier's own report of the failed task."""
    assert result.returncode != 0, explain(result)
    lines = result.stderr.splitlines()
    [at] = [i for i, line in enumerate(lines) if TASK_FAILED in line]
    return lines[at - 1]


def load_post_copy():
    """hooks/post_copy.py as a module (it is a script Copier runs, not a package)."""
    spec = importlib.util.spec_from_file_location("post_copy", REPO / "hooks" / "post_copy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A clone of this checkout with its working tree committed (tests/releases.py)."""
    return make_releases(tmp_path_factory.mktemp("pin") / "template").path


def test_a_copy_from_a_working_tree_with_uncommitted_changes_fails_with_one_line(template, tmp_path):
    readme = template / "README.md"
    readme.write_text(readme.read_text() + "\nA change not committed yet.\n")
    try:
        result = copy(str(template), tmp_path / "project", cwd=tmp_path)
    finally:
        subprocess.run(["git", "-C", str(template), "checkout", "--", "README.md"], check=True)
    line = refusal(result)
    assert line.startswith(f"The template {template} has uncommitted changes"), line
    assert line.endswith(f"commit your changes in {template}, then copy again"), line
    assert "not our ref" not in result.stderr and "uv lock" not in result.stderr
    assert not (tmp_path / "project").exists(), "Copier removes the folder it made when its task fails"


def test_an_update_from_a_working_tree_with_uncommitted_changes_fails_with_one_line(template, tmp_path):
    """Before, the update went through and the user's next `uv lock` failed with git's "not our ref"."""
    project = render_without_tasks(template, tmp_path / "project")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "add", "--all"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "project"], check=True)
    readme = template / "README.md"
    readme.write_text(readme.read_text() + "\nA change not committed yet.\n")
    try:
        command = [COPIER, "update", "--trust", "--defaults", "--vcs-ref", "HEAD", str(project)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    finally:
        subprocess.run(["git", "-C", str(template), "checkout", "--", "README.md"], check=True)
    line = refusal(result)
    assert line.startswith(f"The template {template} has uncommitted changes"), line
    assert line.endswith("(`git checkout -- . && git clean -fd`) and update again"), line
    subprocess.run([*git, "checkout", "--quiet", "--", "."], check=True)
    subprocess.run([*git, "clean", "--quiet", "-fd"], check=True)
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True)
    assert status.stdout == "", "the line's undo leaves the project as it was"


def test_a_copy_from_a_relative_path_fails_with_one_line(template, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    relative = os.path.relpath(template, work)
    result = copy(relative, tmp_path / "project", cwd=work)
    line = refusal(result)
    assert line.startswith(f"The template source '{relative}' is a relative path"), line
    assert "needs an absolute path or a URL" in line
    assert not (tmp_path / "project").exists()


def test_a_copy_from_a_committed_absolute_path_passes_the_check(template, tmp_path):
    """The check alone (the task's later `uv lock` is another test's): run on a render without tasks."""
    project = render_without_tasks(template, tmp_path / "project")
    head = subprocess.run(["git", "-C", str(template), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert (
        f"git+file://localhost{template}@{head.stdout.strip()}#subdirectory=runtime"
        in (project / "pyproject.toml").read_text()
    )
    load_post_copy().check_pin(project)  # raises PinError with the user's line on a bad pin
