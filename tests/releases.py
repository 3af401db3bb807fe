"""Releases of this template in a throwaway repository, for tests that copy one version and update to another.

Tests never rely on tags in the checkout: `make_releases` clones it, commits the working tree (uncommitted
changes included, as `conftest.render` does) and tags the history itself.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The two releases before this one, by commit (see CHANGELOG.md).
FLAT_LAYOUT_COMMIT = "9b5064d"  # v0.9.0: the last flat package (model.py, data.py, registry.py, ...)
STAGE_LAYOUT_COMMIT = "1ec387f"  # v1.0.0: training/, registry/, serving/, monitoring/, local/
FALLBACK_CURRENT = "v1.1.0"

# Commits in the throwaway repository need an author; never the user's own configuration.
IDENTITY = ["-c", "user.name=Template Release", "-c", "user.email=release@example.invalid"]


@dataclass(frozen=True)
class Releases:
    """A clone of the template with its release tags: copy from `previous` or `flat_layout`, update to
    `current` (the working tree)."""

    path: Path
    current: str
    previous: str = "v1.0.0"
    flat_layout: str = "v0.9.0"


def newest_version(changelog: Path) -> str:
    """The newest released version in CHANGELOG.md (`## [1.2.3]`), as a tag; v1.1.0 without one."""
    if changelog.is_file():
        found = re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog.read_text(), flags=re.MULTILINE)
        if found:
            return f"v{found.group(1)}"
    return FALLBACK_CURRENT


def git(*args: str, cwd: Path) -> str:
    """Run git in the throwaway repository; a failure raises with git's own message."""
    result = subprocess.run(["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def make_releases(dest: Path) -> Releases:
    """Clone the checkout into `dest`, commit its working tree on top and tag v0.9.0, v1.0.0 and the
    newest version of CHANGELOG.md (the working tree). Takes about a second."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-tags", "--no-checkout", str(REPO), str(dest)], check=True
    )
    # Stage the checkout's working tree (what `git ls-files -co --exclude-standard` lists, deletions
    # included) without copying it: the clone's index reads the files where they are.
    git("--work-tree", str(REPO), "add", "--all", cwd=dest)
    git("commit", "--quiet", "--allow-empty", "--no-verify", "-m", "Working tree of the checkout", cwd=dest)
    git("checkout", "--quiet", "--force", "HEAD", cwd=dest)
    current = newest_version(dest / "CHANGELOG.md")
    tags = {"v0.9.0": FLAT_LAYOUT_COMMIT, "v1.0.0": STAGE_LAYOUT_COMMIT, current: "HEAD"}
    for tag, commit in tags.items():
        if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=dest).returncode != 0:
            raise RuntimeError(
                f"{REPO} has no commit {commit} for {tag}: a shallow clone? Releases need history"
            )
        git("tag", "--annotate", "--message", f"Release {tag}", tag, commit, cwd=dest)
    return Releases(path=dest, current=current)
