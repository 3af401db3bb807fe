"""Copier migration to v1.0.0, the stage layout: run after `copier update` from a project made before it.

Copier deletes the modules that left the template even when the user changed them (the changes survive only
in git history), and 3-way merges model.py, whose structure changed completely, into one big conflict. This
step keeps every change the user made to those files: each changed file's pre-update version is saved under
migration/v1.0.0/ as a .txt (no linter, type checker or pytest reads it), model.py and tests/test_model.py
take the new template's content, and one line per file, printed and written to MIGRATING.md, says where
that code goes now.

Usage (copier.yml `_migrations`, in the project folder): stage_layout.py VERSION_FROM VERSION_TO
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

import common
from common import Note, committed, conflicts, files, git, take_new

SAVED = Path("migration/v1.0.0")

# Where the code of each flat-layout module lives in the stage layout (paths in the package).
MOVED: dict[str, str] = {
    "aliases": "registry/aliases.py",
    "registry": "registry/store.py",
    "promotion": "registry/promotion.py",
    "service": "serving/service.py",
    "schema": "serving/request_schema.py",
    "batching": "serving/batching.py",
    "middleware": "serving/http_guard.py",
    "requestlog": "serving/request_log.py",
    "runtime": "serving/predictors.py",
    "edge": "serving/onnx_export.py",
    "scoring": "serving/batch_scoring.py",
    "deployment": "serving/bento.py",
    "files": "atomic_write.py",
    "monitoring": "monitoring/drift.py",
    "traffic": "monitoring/served_traffic.py",
    "alerts": "monitoring/alerts.py",
    "metrics_push": "monitoring/pushgateway.py",
    "localstack": "local/processes.py",
    "demo": "local/demo.py",
    "training": "training/holdout.py",
    "tuning": "training/tuning.py",
}
# The two modules the user edited most, split by what the code does.
SPLIT: dict[str, str] = {
    "data": (
        "your loading code to dataset.py (load_frame, between the YOUR CODE fences); file reading and "
        "column names are in tables.py, the checks in training/validation.py"
    ),
    "model": (
        "estimators and search spaces to model.py (MODEL_FAMILIES, between the YOUR CODE fences), the "
        "primary metric to model.py's PRIMARY_METRIC; feature engineering to features.py; preprocessing is "
        "in training/pipeline.py, scoring in training/metrics.py"
    ),
}
# Where a user's own module finds what it imported from a split module now.
SPLIT_IMPORTS: dict[str, str] = {
    "data": "dataset.py, tables.py, training/validation.py",
    "model": "model.py (MODEL_FAMILIES), training/pipeline.py, training/metrics.py",
}
# Files in both layouts whose content the stage layout rewrote: the new version replaces a changed one.
REWRITTEN: dict[str, str] = {
    "model.py": SPLIT["model"],
    "test_model.py": "put the tests you added back into tests/test_model.py (it tests MODEL_FAMILIES now)",
}
# Old test modules whose subject is not a module of MOVED or SPLIT.
TESTS_MOVED: dict[str, str] = {"flows": "tests/flows/test_flows.py"}


def destination(old_path: str, package: str, new_files: set[str]) -> str:
    """Where the code of a file that left the template goes now, in words."""
    stem = Path(old_path).stem
    if old_path.startswith("tests/"):
        subject = stem.removeprefix("test_")
        if subject in TESTS_MOVED:
            return f"move its tests to {TESTS_MOVED[subject]}"
        if subject == "data":
            return "move its tests to tests/test_dataset.py, test_tables.py or training/test_validation.py"
        target = Path(MOVED.get(subject, ""))
        mirrored = f"tests/{target.parent.as_posix()}/test_{target.stem}.py".replace("/./", "/")
        if subject in MOVED and mirrored in new_files:
            return f"move its tests to {mirrored} (tests mirror the package)"
        return "move its tests beside the module they test (tests/ mirrors the package)"
    if stem in SPLIT:
        return f"move {SPLIT[stem]} (all in src/{package}/)"
    if stem in MOVED and f"src/{package}/{MOVED[stem]}" in new_files:
        return f"this module is now src/{package}/{MOVED[stem]}: move your change there"
    if stem in MOVED:  # an update past 2.0.0, where the machinery is the library's
        return (
            f"this module is in the ml-lifecycle library now (ml_lifecycle/_internal/{MOVED[stem]}): keep "
            "your change in dataset.py, features.py or model.py, or in a module of your own"
        )
    return "this file left the template: keep what you need elsewhere"


def stale_imports(package: str, own_files: Iterable[str], new_files: set[str]) -> list[Note]:
    """The user's own modules that import a module that moved (they fail at import until changed)."""

    def moved_to(name: str) -> str:
        if name in SPLIT:
            return SPLIT_IMPORTS[name]
        in_project = f"src/{package}/{MOVED[name]}" in new_files
        return MOVED[name] if in_project else f"ml_lifecycle (the library, {MOVED[name]})"

    names = "|".join(sorted({*MOVED, *SPLIT}, key=len, reverse=True))
    pattern = re.compile(rf"^\s*(?:from|import)\s+(?:\.|{package}\.)({names})\b", re.MULTILINE)
    notes = []
    for path in sorted(own_files):
        content = Path(path).read_text() if path.endswith(".py") and Path(path).is_file() else ""
        moved = sorted(set(pattern.findall(content)))
        if moved:
            where = ", ".join(f"{name} -> {moved_to(name)}" for name in moved)
            notes.append(Note(path, f"imports modules that moved ({where}): change the imports"))
    return notes


def migrate(old: Path, new: Path, package: str) -> list[Note]:
    """Save every file the user changed that left the template or was rewritten, and say where it goes."""
    old_files, new_files = files(old), files(new)
    rewritten = {f"src/{package}/model.py", "tests/test_model.py"} & old_files & new_files
    notes = []
    for path in sorted((old_files - new_files) | rewritten):
        mine = committed(path)
        if mine is None or mine == (old / path).read_text():
            if path not in new_files:
                Path(path).unlink(missing_ok=True)  # untouched: Copier's removal stands
            continue
        kept = common.save(SAVED, path, mine)
        if path in new_files:
            take_new(path, new)
            hint = REWRITTEN[Path(path).name]
            text = f"the new template's version is in place; your version is in {kept}: move {hint}"
        else:
            Path(path).unlink(missing_ok=True)
            text = f"your version is in {kept}; {destination(path, package, new_files)}"
        notes.append(Note(path, text))
    tracked = git("ls-tree", "-r", "--name-only", "HEAD").stdout.split()
    own = [p for p in tracked if p.startswith(("src/", "tests/")) and p not in old_files | new_files]
    notes += stale_imports(package, own, new_files)
    return notes + conflicts()


EXPLANATION = (
    "The package is grouped by lifecycle stage now (training/, registry/, serving/, monitoring/, local/) and "
    "your code goes in three fenced files: dataset.py, features.py, model.py. These files had your changes; "
    "move them as each line says, then delete migration/ and this file."
)

if __name__ == "__main__":
    sys.exit(common.main(sys.argv[1:], "Stage layout migration", migrate, "the stage layout", EXPLANATION))
