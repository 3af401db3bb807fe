"""Copier migration to v1.2.0, state inside the project: run after `copier update` from an older project.

Before, the model store and the production alias were BentoML's default, ~/bentoml (shared by every project
with the same package name), and the studies, request log, reports and deploy's server files sat in .optuna/,
logs/, reports/ and .deploy/. The update moves settings.toml's defaults into .state/ (where the user left them
as they were), so without this step the project would find no production model and an empty request log.

For each of those settings still at its new default, the old folder is moved to its new place when that
place does not exist yet. The project's models and alias record are copied, never moved, from ~/bentoml
into .state/bentoml: a namesake project may still be using them (with BENTOML_HOME exported, the project keeps
using that store, and nothing is copied). One line per step is printed; running it again changes nothing.

Usage (copier.yml `_migrations`, in the project folder): project_state.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

# (section, key, the new default, the old folder, the new folder)
MOVED = [
    ("tuning", "storage", "sqlite:///.state/optuna/studies.db", ".optuna", ".state/optuna"),
    ("serving", "request_log_path", ".state/logs/requests.jsonl", "logs", ".state/logs"),
    ("monitoring", "reports_dir", ".state/reports", "reports", ".state/reports"),
    ("deploy", "state_dir", ".state/deploy", ".deploy", ".state/deploy"),
]
STORE = Path(".state/bentoml")


def say(message: str) -> None:
    print(f"State migration: {message}", file=sys.stderr)


def move_folders(settings: dict) -> None:
    for section, key, default, old, new in MOVED:
        if settings.get(section, {}).get(key, default) != default:
            continue  # the user chose a place: it stays where it is
        if Path(old).is_dir() and not Path(new).exists():
            Path(new).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(old, new)
            say(f"moved {old}/ to {new}/ ({section}.{key})")


def copy_models(settings: dict, exported: str | None) -> None:
    """This package's models and alias record from the old shared store into the project's own."""
    package = settings["project"]["package"]
    if settings.get("registry", {}).get("bentoml_home"):
        return  # a store named in settings.toml is used as before
    if exported:
        say(f"BENTOML_HOME is exported ({exported}): the project keeps using that store, nothing copied")
        return
    old_store = Path.home() / "bentoml"
    models, alias = old_store / "models" / package, old_store / "aliases" / f"{package}.json"
    if not models.is_dir() or (STORE / "models" / package).exists():
        return
    shutil.copytree(models, STORE / "models" / package, symlinks=True)
    if alias.is_file():
        (STORE / "aliases").mkdir(parents=True, exist_ok=True)
        shutil.copy2(alias, STORE / "aliases" / alias.name)
    say(
        f"copied the models and the production alias of {package} from {old_store} to {STORE}/ (the old "
        f"store is left as it was: delete {models} and {alias} once no other project {package} uses them)"
    )


def read_settings(text: str) -> dict:
    """settings.toml as the update left it. Where the update left a conflict, the template's side ("after
    updating") is read: the keys this step needs are the template's defaults, and the user's lines in a
    conflict are theirs to resolve later."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        kept, side = [], "both"
        for line in text.splitlines():
            if line.startswith("<<<<<<< "):
                side = "before"
            elif line.startswith("=======") and side == "before":
                side = "after"
            elif line.startswith(">>>>>>> ") and side == "after":
                side = "both"
            elif side != "before":
                kept.append(line)
        return tomllib.loads("\n".join(kept))


def main() -> int:
    settings = read_settings(Path("settings.toml").read_text(encoding="utf-8"))
    move_folders(settings)
    copy_models(settings, os.environ.get("BENTOML_HOME"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
