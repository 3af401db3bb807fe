"""Releases of this template in a throwaway repository, for tests that copy one version and update to another.

Tests never rely on tags in the checkout: `make_releases` clones it, commits the working tree (uncommitted
changes included, as `conftest.render` does) and tags the history itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import copier
from conftest import uv_python
from copier.errors import DirtyLocalWarning

REPO = Path(__file__).resolve().parents[1]

# The two releases before this one, by commit (see CHANGELOG.md).
FLAT_LAYOUT_COMMIT = "9b5064d"  # v0.9.0: the last flat package (model.py, data.py, registry.py, ...)
STAGE_LAYOUT_COMMIT = "1ec387f"  # v1.0.0: training/, registry/, serving/, monitoring/, local/
LAST_COPY_COMMIT = (
    "dbd2843"  # v1.1.0: the machinery still copied into every project (2.0.0 made it a library)
)
FALLBACK_CURRENT = "v1.1.0"

# Commits in the throwaway repository need an author; never the user's own configuration.
IDENTITY = ["-c", "user.name=Template Release", "-c", "user.email=release@example.invalid"]


@dataclass(frozen=True)
class Releases:
    """A clone of the template with its release tags: copy from `previous`, `flat_layout` or
    `copied_machinery`, update to `current` (the working tree)."""

    path: Path
    current: str
    previous: str = "v1.0.0"
    flat_layout: str = "v0.9.0"
    copied_machinery: str = "v1.1.0"


def newest_version(changelog: Path) -> str:
    """The newest released version in CHANGELOG.md (`## [1.2.3]`), as a tag; v1.1.0 without one."""
    if changelog.is_file():
        found = re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog.read_text(), flags=re.MULTILINE)
        if found:
            return f"v{found.group(1)}"
    return FALLBACK_CURRENT


def template_git(*args: str, cwd: Path) -> str:
    """Run git in the throwaway repository; a failure raises with git's own message."""
    result = subprocess.run(["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def make_releases(dest: Path) -> Releases:
    """Clone the checkout into `dest`, commit its working tree on top and tag v0.9.0, v1.0.0, v1.1.0 and the
    newest version of CHANGELOG.md (the working tree). Takes about a second."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-tags", "--no-checkout", str(REPO), str(dest)], check=True
    )
    # Stage the checkout's working tree (what `git ls-files -co --exclude-standard` lists, deletions
    # included) without copying it: the clone's index reads the files where they are.
    template_git("--work-tree", str(REPO), "add", "--all", cwd=dest)
    template_git(
        "commit", "--quiet", "--allow-empty", "--no-verify", "-m", "Working tree of the checkout", cwd=dest
    )
    template_git("checkout", "--quiet", "--force", "HEAD", cwd=dest)
    current = newest_version(dest / "CHANGELOG.md")
    tags = {
        "v0.9.0": FLAT_LAYOUT_COMMIT,
        "v1.0.0": STAGE_LAYOUT_COMMIT,
        "v1.1.0": LAST_COPY_COMMIT,
        current: "HEAD",
    }
    for tag, ref in tags.items():
        if subprocess.run(["git", "cat-file", "-e", f"{ref}^{{commit}}"], cwd=dest).returncode != 0:
            raise RuntimeError(
                f"{REPO} has no commit {ref} for {tag}: a shallow clone? Releases need history"
            )
        template_git("tag", "--annotate", "--message", f"Release {tag}", tag, ref, cwd=dest)
    return Releases(path=dest, current=current)


# ---- What a user does with a release: copy it, commit, run git (test_update.py, test_generator_flows.py)

# Commits in test projects need an author whatever the machine's git configuration.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "user@example.invalid",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "user@example.invalid",
}


def git(project: Path, *args: str) -> str:
    """git in a test project, with an author of its own; a failure fails the test with git's message."""
    result = subprocess.run(
        ["git", *args], cwd=project, capture_output=True, text=True, env={**os.environ, **GIT_IDENTITY}
    )
    assert result.returncode == 0, f"git {args}: {result.stderr}"
    return result.stdout


def commit(project: Path, message: str) -> None:
    """Commit everything, as a user does before `copier update` (it refuses a dirty project)."""
    if not (project / ".git").exists():  # the copy task commits only where git knows the user
        git(project, "init", "--quiet")
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "--allow-empty", "--message", message)


def copy_release(releases: Releases, ref: str, dst: Path, *, run_tasks: bool = False, **answers) -> Path:
    """`copier copy --trust --defaults --vcs-ref REF` of a release; with run_tasks, the copy task locks the
    dependencies (and commits where git knows the user)."""
    with warnings.catch_warnings(), uv_python("3.11"):
        warnings.simplefilter("ignore", DirtyLocalWarning)
        copier.run_copy(
            str(releases.path),
            str(dst),
            data=answers,
            vcs_ref=ref,
            defaults=True,
            unsafe=True,
            quiet=True,
            skip_tasks=not run_tasks,
        )
    return dst
