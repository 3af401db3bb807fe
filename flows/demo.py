"""The generator's main job: scaffold a project with default answers, install it, run its lifecycle once.

    uv run python -m flows.demo [DEST]        (DEST defaults to ./demo-project)

The project's own `demo` command starts (and stops) the local Prefect server, the worker and the BentoML
service, so this script needs no server of its own: its steps are plain functions, each printed as it runs.
Everything the project's runs write (model store, alias, Prefect's files) stays in DEST/.state/, so the
command can run again into another DEST from the same home. Run again into the same DEST, it runs the demo
of the project it made there before (its own demo store is emptied at each run), so the README's command
passes the second time too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from flows.projects import (
    INSTALL,
    REPO,
    NotAProject,
    copy_project,
    project_env,
    recorded_answers,
    unpinned_commit,
    uv,
)

DEFAULT_DEST = Path("demo-project")


def step(title: str, command: list[str], cwd: Path) -> None:
    print(f"==> {title}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=cwd, env=project_env(), check=True)
    print(f"<== {title} done in {time.monotonic() - started:.1f} s", flush=True)


def earlier_project(dest: Path) -> str | None:
    """The package of the project an earlier run of this command scaffolded into dest; None when dest is
    empty or absent. Anything else in dest is refused: this command never writes over files it did not make.
    """
    if not dest.exists() or not any(dest.iterdir()):
        return None
    refusal = f"{dest} exists and is not a project this command made: choose another DEST or remove it"
    try:
        answers = recorded_answers(dest)
    except NotAProject as exc:
        sys.exit(f"{refusal} ({exc})")
    if answers.get("_src_path") != str(REPO):
        sys.exit(f"{refusal} (it was copied from {answers.get('_src_path')!r}, not from {REPO})")
    return str(answers["package_name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "dest", nargs="?", type=Path, default=DEFAULT_DEST, help="where to create the project"
    )
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    package = earlier_project(dest)
    started = time.monotonic()
    if package is None:
        print(f"==> scaffold: copier copy {REPO} {dest}", flush=True)
        package = copy_project(dest)["package_name"]
    else:
        print(
            f"==> reuse: {dest} holds the project an earlier run made; its demo runs again "
            "(remove the folder or choose another DEST for a fresh copy)",
            flush=True,
        )
    if reason := unpinned_commit(dest):
        sys.exit(reason)
    step("install", [uv(), *INSTALL], dest)
    try:
        step("lifecycle", [uv(), "run", "python", "-m", package, "demo"], dest)
    except subprocess.CalledProcessError as exc:
        print(
            f"The demo failed (exit {exc.returncode}); logs are in {dest / '.state' / 'demo' / 'logs'}",
            file=sys.stderr,
        )
        return exc.returncode
    print(f"Done in {time.monotonic() - started:.0f} s. The project is in {dest}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
