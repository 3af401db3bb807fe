"""What the migrations that compare the template's two versions share (stage_layout.py, library.py): git and
Copier helpers, the notes to the user in MIGRATING.md, and the command that renders both versions.

Copier runs each migration as a script from the template's checkout, so this module is found beside it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import copier
import yaml

NOTES = Path("MIGRATING.md")


@dataclass(frozen=True)
class Note:
    """One file that needs the user's attention, and what to do about it."""

    path: str
    text: str

    def line(self) -> str:
        return f"- {self.path}: {self.text}"


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def committed(path: str) -> str | None:
    """The file as the last commit has it: the project before the update (Copier refuses a dirty one)."""
    shown = git("show", f"HEAD:{path}")
    return shown.stdout if shown.returncode == 0 else None


def render(src: str, ref: str, answers: dict, dst: Path) -> Path:
    """A pristine copy of the template at `ref` with the project's answers, without its tasks."""
    data = {key: value for key, value in answers.items() if not key.startswith("_")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copier.run_copy(
            src, str(dst), data=data, vcs_ref=ref, defaults=True, unsafe=True, skip_tasks=True, quiet=True
        )
    return dst


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


def save(saved: Path, path: str, content: str) -> str:
    """Keep the user's version of `path` under `saved`, as a .txt no tool reads; returns where."""
    kept = saved / f"{path}.txt"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(content)
    return kept.as_posix()


def take_new(path: str, new: Path) -> None:
    """The new template's content at `path`, and no leftover conflict from Copier's merge in the index."""
    Path(path).write_text((new / path).read_text())
    git("reset", "--quiet", "--", path)


def conflicts() -> list[Note]:
    """The files Copier's merge left conflict markers in."""
    unmerged = git("diff", "--name-only", "--diff-filter=U").stdout.split()
    return [Note(path, "conflict markers from the update: resolve them") for path in unmerged]


def report(notes: list[Note], migration: str, heading: str, *, after_earlier: bool = False) -> None:
    """Print the notes and keep them in MIGRATING.md, which the user deletes when done; `after_earlier`
    keeps an earlier migration's notes of the same update in front."""
    if not notes:
        print(f"{migration}: none of your changes needed moving.")
        return
    body = "\n".join(note.line() for note in notes)
    if after_earlier and NOTES.is_file():
        heading = NOTES.read_text() + "\n#" + heading
    NOTES.write_text(heading + body + "\n")
    print(f"{migration}: {len(notes)} file(s) need you, listed in {NOTES}:")
    print(body)


def main(
    argv: list[str],
    migration: str,
    migrate: Callable[[Path, Path, str], list[Note]],
    subject: str,
    explanation: str,
    *,
    after_earlier: bool = False,
) -> int:
    """The migration's command (VERSION_FROM VERSION_TO, in the project folder): render the template at both
    versions with the project's answers, `migrate(old, new, package)`, and report the notes under a heading
    on `subject` and the `explanation` of what changed and what the user does."""
    version_from, version_to = argv
    old_answers = yaml.safe_load(committed(".copier-answers.yml") or "{}")
    new_answers = yaml.safe_load(Path(".copier-answers.yml").read_text())
    src = str(new_answers["_src_path"])
    with tempfile.TemporaryDirectory(prefix="migration-") as scratch:
        try:
            old = render(src, version_from, old_answers, Path(scratch, "old"))
            new = render(src, version_to, new_answers, Path(scratch, "new"))
        except Exception as exc:  # Copier and git raise many types; the user needs one line and a way back
            print(
                f"{migration}: cannot copy the template {src} at {version_from} and {version_to} to compare "
                f"with your files ({exc}). Your changes are safe in the last commit; "
                "`git checkout HEAD -- . && git clean -fd` undoes the update: retry where the template is "
                "reachable.",
                file=sys.stderr,
            )
            return 1
        notes = migrate(old, new, str(new_answers["package_name"]))
    report(
        notes,
        f"{migration} ({version_from} -> {version_to})",
        f"# Migrating from {version_from} to {version_to}: {subject}\n\n{explanation}\n\n",
        after_earlier=after_earlier,
    )
    return 0
