"""After `copier copy`: lock the new project's dependencies and make it a git repository with a first
commit, so `copier update` has a clean history to work from.

Runs in the new project's folder. Neither step may cost the user their new project: Copier deletes the
folder when a task fails, so a failed step says how to finish it by hand and the task still succeeds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def say(message: str) -> None:
    print(message, file=sys.stderr)


def lock() -> None:
    uv = shutil.which("uv")
    if uv is None:
        say("uv not found: run `uv lock` in the project to pin its dependencies")
        return
    if subprocess.run([uv, "lock", "--quiet"], check=False).returncode != 0:
        say("`uv lock` failed (see above); the project is in place: fix the cause and run `uv lock` in it")


def first_commit() -> None:
    """`git init` and a first commit, when git is there, the folder is not inside a repository already
    and git knows who commits (never an invented identity)."""
    git = shutil.which("git")
    if git is None:
        return

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([git, *args], capture_output=True, text=True, check=False)

    if run("rev-parse", "--is-inside-work-tree").returncode == 0:
        return  # copied into an existing repository: its owner commits
    if run("init", "--quiet").returncode != 0:
        say("`git init` failed: the project is not a git repository yet")
        return
    run("add", "--all")
    if not run("config", "user.email").stdout.strip():
        say("git has no user.email: set it, then `git commit -m 'Project from the template'` in the project")
        return
    committed = run("commit", "--quiet", "-m", f"{Path.cwd().name}: project from the template")
    if committed.returncode != 0:
        say(f"git commit failed ({committed.stderr.strip()}); commit the project yourself")


def main() -> int:
    lock()
    first_commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
