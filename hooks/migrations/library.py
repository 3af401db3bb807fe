"""Copier migration to v2.0.0, the library: run after `copier update` from a 1.x project.

The machinery (config.py, tables.py, training/, registry/, serving/, monitoring/, flows/, local/, ...) left
the project for the ml-lifecycle library, which the project now pins. Copier deletes those modules and their
tests even where the user changed them (the changes survive only in git history). This step keeps every
change: a changed file's pre-update version is saved under migration/v2.0.0/ as a .txt (no tool reads it) and
named, one line each, printed and written to MIGRATING.md; an unchanged one stays deleted. In the user's own
modules, imports of the public names from `.config` and `.tables` become `from ml_lifecycle import ...`, and
every other import of the machinery is named, since it fails until changed.

Usage (copier.yml `_migrations`, in the project folder): library.py VERSION_FROM VERSION_TO
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

import common
from common import NOTES, Note, committed, conflicts, files, git, take_new

SAVED = Path("migration/v2.0.0")
EARLIER = Path("migration/v1.0.0")  # saved by the stage-layout migration when the update started before 1.0.0
LIBRARY = "ml_lifecycle"

# The library's public package in this template checkout (Copier runs the migration from it).
LIBRARY_INIT = Path(__file__).resolve().parents[2] / "runtime" / "src" / LIBRARY / "__init__.py"


def public_names(init: Path = LIBRARY_INIT) -> dict[str, set[str]]:
    """The names the library exports (its __all__) by the private module they come from, e.g. "config":
    {"Settings", ...}: what a project imported from its own copy of that module. Read from the library's
    source (its `_WHERE`), since Copier's Python does not have the library installed."""
    tree = ast.parse(init.read_text())
    where = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_WHERE"]
    )
    public: dict[str, set[str]] = {}
    for name, module in where.items():
        public.setdefault(module, set()).add(name)
    return public


PUBLIC = public_names()
# The machinery's top-level modules and packages in 1.x (flows and service exist in 2.0 as thin re-exports).
MACHINERY = r"atomic_write|config|tables|training|registry|serving|monitoring|local|flows(?=\.)|service(?=\.)"
FOLDERS = ("training", "registry", "serving", "monitoring", "local", "flows")
# Files in both layouts that the move rewrote whole: a changed one is saved and the new version put in place
# (a 3-way merge of a 300-line command line into a 10-line call would be one conflict).
REWRITTEN: dict[str, str] = {
    "__main__.py": "the command line is the library's now (ml_lifecycle/_internal/cli.py)",
    "__init__.py": "the package binds itself to the library here (ml_lifecycle.bind); keep that call",
}
CONFLICT = re.compile(r"^(<<<<<<<|>>>>>>>) ", re.MULTILINE)
CONFLICT_BLOCK = re.compile(
    r"^<<<<<<< before updating\n(?P<ours>.*?)^=======\n(?P<theirs>.*?)^>>>>>>> after updating\n",
    re.MULTILINE | re.DOTALL,
)
REQUIREMENT_LINE = re.compile(r'^[ \t]*"[^"\n]+",?[ \t]*(#.*)?$')


def import_pattern(package: str) -> re.Pattern[str]:
    """`from .config import A, B` / `from pkg.tables import (A,\n B)`, at any indentation."""
    return re.compile(
        rf"^(?P<indent>[ \t]*)from[ \t]+(?:\.|{package}\.)(?P<module>{MACHINERY})(?P<sub>(?:\.\w+)*)"
        r"[ \t]+import[ \t]+(?P<names>\([^)]*\)|[^\n]+)$",
        re.MULTILINE,
    )


def imported_names(names: str) -> list[str]:
    """The names of an import list, `X as Y` kept whole; a trailing comment dropped."""
    names = re.sub(r"#[^\n]*", "", names).strip().strip("()")
    return [name.strip() for name in names.replace("\n", " ").split(",") if name.strip()]


def rewrite_imports(path: Path, package: str) -> list[str]:
    """Point the file's imports of public names at the library; returns the imports left to the user."""
    text = path.read_text()
    if CONFLICT.search(text):
        return []  # the update left conflict markers here: named with the conflicts, rewritten by the user
    left: list[str] = []

    def public(match: re.Match[str]) -> str:
        module, names = match["module"], imported_names(match["names"])
        if match["sub"] or not names or not all(n.split(" as ")[0] in PUBLIC.get(module, ()) for n in names):
            left.append(f"{match['module']}{match['sub']}")
            return match.group(0)
        comment = re.search(r"[ \t]*#[^\n]*$", match["names"])  # the user's note on the line stays
        names_line = ", ".join(sorted(names))
        return f"{match['indent']}from {LIBRARY} import {names_line}{comment[0] if comment else ''}"

    rewritten = import_pattern(package).sub(public, text)
    plain = re.findall(rf"^[ \t]*import[ \t]+{package}\.({MACHINERY})((?:\.\w+)*)\b", rewritten, re.MULTILINE)
    left += [module + sub for module, sub in plain]
    if rewritten != text:
        path.write_text(rewritten)
    return sorted(set(left))


def keep_added_dependencies(old: Path) -> list[str]:
    """The dependency list was the machinery's and is one pin now: a requirement the user added to it makes
    the update's merge a conflict. Where the user's side of a conflict in pyproject.toml is only requirements,
    the ones the old template did not have stay, in front of the template's new side. Returns them."""
    path = Path("pyproject.toml")
    if not path.is_file() or not (old / "pyproject.toml").is_file():
        return []
    text = path.read_text()
    template_lines = {line.strip() for line in (old / "pyproject.toml").read_text().splitlines()}
    kept: list[str] = []

    def resolve(block: re.Match[str]) -> str:
        ours = block["ours"].splitlines(keepends=True)
        if not all(
            REQUIREMENT_LINE.match(line) or line.strip().startswith("#") or not line.strip() for line in ours
        ):
            return block.group(0)
        added = [line for line in ours if REQUIREMENT_LINE.match(line) and line.strip() not in template_lines]
        kept.extend(line.strip().split('"')[1] for line in added)
        return "".join(added) + block["theirs"]

    resolved = CONFLICT_BLOCK.sub(resolve, text)
    if resolved != text:
        path.write_text(resolved)
        if not CONFLICT.search(resolved):
            git("reset", "--quiet", "--", str(path))  # no longer unmerged in git's index
    return kept


def library_path(path: str, package: str) -> str:
    """Where a machinery module of the project lives in the library."""
    return f"{LIBRARY}/_internal/{path.removeprefix(f'src/{package}/')}"


def what_to_do(path: str, package: str, kept: str) -> str:
    if path.startswith(f"src/{package}/"):
        return (
            f"your version is in {kept}; this module is the library's now ({library_path(path, package)}, "
            "updated through the pin in pyproject.toml): keep your change in dataset.py, features.py or "
            "model.py if it belongs there, or in a module of your own, or propose it to the template"
        )
    if path.startswith("tests/"):
        return (
            f"your version is in {kept}; the library tests its machinery itself: move tests of your own code "
            "to tests/test_dataset.py, test_features.py or test_model.py"
        )
    return f"your version is in {kept}; this file left the template: keep what you need elsewhere"


def drop_empty_folders(root: Path) -> None:
    """Folders the machinery left holding only caches (git does not track them, so Copier leaves them)."""
    for folder in sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        if folder.name == "__pycache__" or not folder.exists():
            continue
        if all(child.name == "__pycache__" for child in folder.iterdir()):
            shutil.rmtree(folder)


def migrate(old: Path, new: Path, package: str) -> list[Note]:
    """Save every file the user changed that left the template; point the user's imports at the library."""
    old_files, new_files = files(old), files(new)
    notes = []
    for path in sorted(old_files - new_files):
        if (EARLIER / f"{path}.txt").exists():
            continue  # the stage-layout migration saved and named it already
        mine = committed(path)
        if mine is not None and mine != (old / path).read_text():
            notes.append(Note(path, what_to_do(path, package, common.save(SAVED, path, mine))))
        Path(path).unlink(missing_ok=True)  # Copier removed it; a second run finds nothing to remove
    for name, hint in REWRITTEN.items():
        path = f"src/{package}/{name}"
        mine = committed(path)
        if path in old_files & new_files and mine is not None and mine != (old / path).read_text():
            kept = common.save(SAVED, path, mine)
            take_new(path, new)
            notes.append(Note(path, f"the new template's version is in place; yours is in {kept}: {hint}"))
    for folder in ("src", "tests"):
        if Path(folder).is_dir():
            drop_empty_folders(Path(folder))
    template_files = old_files | new_files
    user_code = {f"src/{package}/{name}.py" for name in ("dataset", "features", "model")}
    tracked = set(git("ls-tree", "-r", "--name-only", "HEAD").stdout.split())
    own = {p for p in tracked if p.startswith(("src/", "tests/")) and p not in template_files}
    named = NOTES.read_text() if NOTES.is_file() else ""  # the stage-layout migration's lines, when it ran
    for path in sorted(own):
        folder = path.removeprefix(f"src/{package}/").split("/")[0]
        if path.startswith(f"src/{package}/") and folder in FOLDERS and Path(path).is_file():
            notes.append(
                Note(
                    path,
                    f"a module of yours in {folder}/, which is the library's now: move it to src/{package}/ "
                    "(or a folder of your own with an __init__.py) and change its imports",
                )
            )
    for path in sorted(user_code | own):
        if not path.endswith(".py") or not Path(path).is_file() or f"- {path}:" in named:
            continue
        left = rewrite_imports(Path(path), package)
        if left:
            where = ", ".join(f".{module} -> {LIBRARY}._internal.{module}" for module in left)
            notes.append(
                Note(
                    path,
                    f"imports machinery that is private to the library now ({where}): use the public names "
                    f"({LIBRARY}: Settings, get_settings, read_table, normalize_columns, DataError, ...) or "
                    "your own code",
                )
            )
    kept = keep_added_dependencies(old)
    if kept:
        print(
            f"Library migration: your dependencies {', '.join(kept)} stay in pyproject.toml, beside the pin."
        )
    return notes + conflicts()


EXPLANATION = (
    "The machinery (training, registry, serving, monitoring, flows, the demo) is the ml-lifecycle library "
    "now, pinned in pyproject.toml; the package keeps dataset.py, features.py and model.py, and thin "
    "flows.py, service.py and __main__.py. Run `uv lock` (or `uv sync`) for the new pin. These files had "
    "your changes; act as each line says, then delete migration/ and this file."
)

if __name__ == "__main__":
    # The stage-layout migration's notes, when it ran in the same update, come first.
    sys.exit(
        common.main(
            sys.argv[1:],
            "Library migration",
            migrate,
            "the ml-lifecycle library",
            EXPLANATION,
            after_earlier=True,
        )
    )
