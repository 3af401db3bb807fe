"""Update many generated projects to a template release as one Prefect flow, each on a branch of its own.

    uv run python -m flows.update_fleet [--vcs-ref v1.1.0] [--workspace DIR] [--] PROJECT [PROJECT ...]

A PROJECT is a local path or a git URL. Each is updated away from its own checkout: a local project in a
git worktree on a new branch, a URL in a fresh clone, both under the workspace. Then `copier update`, and
with no conflict the dependencies are locked again (the update moves the library's pin), the change and
its uv.lock are committed on that branch, installed and tested with the project's own suite. One
`fleet-update` table artifact lists every project: version before and after, conflicts, test result,
branch and where it is. A broken entry is a row with its error; the others go on. Nothing is
pushed or merged: the branches are for a person (or a later CI job) to review.

An entry is only ever a path or a URL: git gets `--` before it, so one starting with `-`
(`--upload-pack=...`) cannot pass as an option (on the command line, put `--` before such entries too).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.projects import NotAProject, last_line, recorded_answers, run_in, template_version, uv

PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider"]
CONFLICT_MARKERS = re.compile(rb"^(<<<<<<< before updating|>>>>>>> after updating)\s*$", re.MULTILINE)
# Who commits the update on the branch when the project's git has no identity of its own.
COMMITTER = {
    f"GIT_{role}_{field}": value
    for role in ("AUTHOR", "COMMITTER")
    for field, value in (("NAME", "template-fleet"), ("EMAIL", "template-fleet@localhost"))
}


@dataclass(frozen=True)
class FleetRow:
    project: str
    status: str  # updated, conflicts, tests failed, error
    version_before: str = ""
    version_after: str = ""
    conflicts: str = ""
    tests: str = ""
    branch: str = ""
    where: str = ""


class FleetEntryError(RuntimeError):
    """One project cannot be updated; the message says why and what to do."""


class FleetIncomplete(RuntimeError):
    """Some projects need a person: the artifact lists them."""


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A git command; callers put `--` before every path or URL that comes from an entry."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def is_url(entry: str) -> bool:
    return "://" in entry or entry.startswith("git@")


def checkout(entry: str, workspace: Path, branch: str) -> Path:
    """A working copy on `branch` under the workspace: a worktree of a local project, a clone of a URL."""
    name = re.sub(r"\.git$", "", entry.rstrip("/").rsplit("/", 1)[-1]) or "project"
    where = workspace / f"{name}-{branch.replace('/', '-')}"
    if where.exists():
        raise FleetEntryError(f"{where} exists from an earlier run: remove it (and its branch) first")
    if is_url(entry):
        cloned = git(workspace, "clone", "--quiet", "--", entry, str(where))
        if cloned.returncode != 0:
            raise FleetEntryError(f"cannot clone {entry}: {last_line(cloned.stderr)}")
        made = git(where, "switch", "--quiet", "-c", branch)
    else:
        source = Path(entry).expanduser().resolve()
        if not source.is_dir():
            raise FleetEntryError(f"{entry} does not exist: check the path")
        recorded_answers(source)  # not a Copier project: say so before touching its git
        top = git(source, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            raise FleetEntryError(
                f"{entry} is not a git repository: `git init` and commit it, then run again"
            )
        dirty = git(source, "status", "--porcelain", "--untracked-files=no").stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        if changed:
            raise FleetEntryError(
                f"{entry} has uncommitted changes ({', '.join(changed[:5])}): "
                "commit or stash them, then run again"
            )
        made = git(source, "worktree", "add", "--quiet", "-b", branch, "--", str(where))
    if made.returncode != 0:
        raise FleetEntryError(f"cannot make branch {branch} of {entry}: {last_line(made.stderr)}")
    return where


def conflicted_files(project: Path) -> list[str]:
    """Files Copier left with inline conflict markers (it also records them as unmerged), or .rej files."""
    unmerged = git(project, "diff", "--name-only", "--diff-filter=U").stdout.split()
    listed = git(project, "ls-files", "--modified", "--others", "--exclude-standard").stdout.split()
    marked = [name for name in listed if (project / name).is_file() and has_markers(project / name)]
    rejected = [name for name in listed if name.endswith(".rej")]
    return sorted(set(unmerged) | set(marked) | set(rejected))


def has_markers(path: Path) -> bool:
    return CONFLICT_MARKERS.search(path.read_bytes()) is not None


def copier_update(project: Path, vcs_ref: str | None) -> None:
    command = [sys.executable, "-m", "copier", "update", "--trust", "--defaults", "--conflict", "inline"]
    result = run_in(project, [*command, *(["--vcs-ref", vcs_ref] if vcs_ref else [])])
    if result.returncode != 0:
        raise FleetEntryError(f"copier update failed: {last_line(result.stderr) or last_line(result.stdout)}")


def commit(project: Path, message: str) -> None:
    git(project, "add", "--all")
    identity = git(project, "config", "user.email").stdout.strip()
    env = None if identity else {**os.environ, **COMMITTER}
    done = git(project, "commit", "--quiet", "--no-verify", "-m", message, env=env)
    if done.returncode != 0 and "nothing to commit" not in done.stdout:
        raise FleetEntryError(f"cannot commit the update: {last_line(done.stderr) or last_line(done.stdout)}")


def lock(project: Path) -> None:
    """`uv lock` after the update, as its user would: the new release pins the library at another commit."""
    locked = run_in(project, [uv(), "lock"])
    if locked.returncode != 0:
        raise FleetEntryError(f"uv lock failed: {last_line(locked.stderr) or last_line(locked.stdout)}")


def run_tests(project: Path, pytest_args: list[str]) -> tuple[bool, str]:
    synced = run_in(project, [uv(), "sync", "--locked"])
    if synced.returncode != 0:
        return False, f"uv sync failed: {last_line(synced.stderr)}"
    tested = run_in(project, [uv(), "run", "pytest", *pytest_args])
    return tested.returncode == 0, last_line(tested.stdout) or last_line(tested.stderr)


@task(task_run_name="update {entry}")
def update_project(
    entry: str, workspace: Path, branch: str, vcs_ref: str | None, pytest_args: list[str]
) -> FleetRow:
    """One project, start to end; its failure is its own row, never the fleet's."""
    try:
        where = checkout(entry, workspace, branch)
        before = template_version(where)
        copier_update(where, vcs_ref)
        after = template_version(where)
        conflicts = conflicted_files(where)
        row = FleetRow(entry, "conflicts", before, after, ", ".join(conflicts), "", branch, str(where))
        if conflicts:
            print(f"{entry}: conflicts in {', '.join(conflicts)}; resolve them on branch {branch} in {where}")
            return row
        lock(where)
        commit(where, f"Update from template {before} to {after}")
        passed, summary = run_tests(where, pytest_args)
        status = "updated" if passed else "tests failed"
        return FleetRow(entry, status, before, after, "", summary, branch, str(where))
    except (FleetEntryError, NotAProject, OSError) as exc:
        print(f"{entry}: {exc}")
        return FleetRow(entry, "error", tests=str(exc))


@flow(name="update-fleet", log_prints=True)
def update_fleet(
    projects: list[str],
    workspace: str = "fleet-workspace",
    vcs_ref: str | None = None,
    branch: str | None = None,
    pytest_args: list[str] | None = None,
) -> list[FleetRow]:
    """vcs_ref None: the newest release tag of each project's template, as `copier update` chooses."""
    root = Path(workspace).resolve()
    root.mkdir(parents=True, exist_ok=True)
    name = branch or f"template-update-{vcs_ref or 'latest'}"
    rows = [update_project(entry, root, name, vcs_ref, pytest_args or PYTEST_ARGS) for entry in projects]
    for row in rows:
        print(" | ".join(f"{key}={value}" for key, value in asdict(row).items() if value))
    create_table_artifact(
        key="fleet-update",
        table=[asdict(row) for row in rows],
        description=f"copier update to {vcs_ref or 'latest'}",
    )
    needs_a_person = [f"{row.project} ({row.status})" for row in rows if row.status != "updated"]
    if needs_a_person:
        raise FleetIncomplete(
            f"{len(needs_a_person)} of {len(rows)} need a person: {'; '.join(needs_a_person)}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.update_fleet", description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="+", help="local paths or git URLs of generated projects")
    parser.add_argument("--workspace", default="fleet-workspace", help="where the branches are checked out")
    parser.add_argument("--vcs-ref", default=None, help="template release to update to (default: newest tag)")
    parser.add_argument("--branch", default=None, help="branch name (default: template-update-<ref>)")
    parser.add_argument("--pytest-args", default=" ".join(PYTEST_ARGS), help="how each project's tests run")
    args = parser.parse_args(argv)
    state = update_fleet(
        args.projects,
        args.workspace,
        args.vcs_ref,
        args.branch,
        shlex.split(args.pytest_args),
        return_state=True,
    )
    print(state.message or "", file=sys.stderr if state.is_failed() else sys.stdout)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
