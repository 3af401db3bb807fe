"""After `copier copy`: check the project's pin on the library, lock the new project's dependencies and make
it a git repository with a first commit, so `copier update` has a clean history to work from. After
`copier update` (argument `update`): only the pin's check, so an update from a dirty template fails there,
naming the fix, instead of at the user's next `uv lock` with git's "not our ref".

Runs in the new project's folder. A pin that can never install (a relative template path, or a commit only
Copier's own copy of a dirty working tree had) fails the copy with one line saying what to do: Copier then
deletes the folder it made, and nothing of the user's is lost, whereas a project kept with that pin would
fail later in `uv sync` with git's "not our ref". The other steps may not cost the user their project: a
failed `uv lock` or commit says how to finish it by hand and the task still succeeds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

# The library requirement hooks/render/pin.jinja writes into pyproject.toml: URL up to the last '@', commit.
PIN = re.compile(r'"ml-lifecycle @ (?P<url>[^"]+)@(?P<commit>[^"@#]*)#subdirectory=runtime"')
SCP_LIKE = re.compile(r"^[^/:]+:")  # [user@]host:path, as git reads it (git@github.com:org/repo.git)


class PinError(Exception):
    """The project's pin cannot be installed; the message is the one line the user reads."""


def answered_source(answers: str) -> str:
    """The template source as the user typed it (`_src_path` in .copier-answers.yml)."""
    found = re.search(r"^_src_path: *(.+?) *$", answers, flags=re.MULTILINE)
    if found is None:
        raise PinError(".copier-answers.yml records no _src_path: copy the project again with Copier")
    return found.group(1).strip("'\"")


def local_path(source: str, again: str = "copy again") -> Path | None:
    """The folder of a local template source; None for a remote one. A relative path is refused: the pin
    must name the same repository wherever `uv sync` runs."""
    bare = source.removeprefix("git+")
    if bare.startswith("file://"):
        return Path("/" + unquote(bare.removeprefix("file://").removeprefix("localhost")).lstrip("/"))
    if "://" in bare or bare.startswith(("gh:", "gl:")) or SCP_LIKE.match(bare):
        return None
    if not bare.startswith("/"):
        raise PinError(
            f"The template source {source!r} is a relative path, and the project's pin on the library needs "
            f"an absolute path or a URL: {again} with the template's absolute path (for example "
            f"$(realpath {source}))"
        )
    return Path(bare)


def check_pin(project: Path, again: str = "copy again") -> None:
    """Refuse a pin that can never install, before `uv lock` would fail on it with git's message."""
    source = answered_source((project / ".copier-answers.yml").read_text())
    found = PIN.search((project / "pyproject.toml").read_text())
    if found is None:
        raise PinError("pyproject.toml has no ml-lifecycle requirement: the template rendered it wrong")
    folder = local_path(source, again)
    if folder is None:
        return  # a remote repository: Copier cloned it, so the commit is one the remote has
    commit = found.group("commit")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise PinError(
            f"The template {folder} is not a git repository, so the project's pin on the library has no "
            f"commit to name: make {folder} a git repository with its files committed, then {again}"
        )
    if shutil.which("git") is None:
        return  # nothing to check the commit with (Copier found it with git, so this is rare)
    known = subprocess.run(
        ["git", "-C", str(folder), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, check=False
    )
    if known.returncode != 0:
        raise PinError(
            f"The template {folder} has uncommitted changes, so the project's pin names a commit only "
            f"Copier's copy had ({commit[:12]}): commit your changes in {folder}, then {again}"
        )


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


def main(operation: str = "copy") -> int:
    if operation == "update":
        # Copier has written the update by now: the project's git status shows it, `git checkout -- .` and
        # `git clean -fd` undo it (the update refuses a dirty project, so nothing else is in the way).
        again = "undo this update in the project (`git checkout -- . && git clean -fd`) and update again"
    else:
        again = "copy again"
    try:
        check_pin(Path.cwd(), again)
    except PinError as refused:
        say(str(refused))
        return 1
    if operation == "update":
        return 0  # the user locks after an update (`uv lock`), once any conflicts are resolved
    lock()
    first_commit()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
