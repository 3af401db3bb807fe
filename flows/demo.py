"""The generator's main job: scaffold a project with default answers, install it, run its lifecycle once.

    uv run python -m flows.demo [DEST]        (DEST defaults to ./demo-project)

The project's own `demo` command starts (and stops) the local Prefect server, the worker and the BentoML
service, so this script needs no server of its own: its steps are plain functions, each printed as it runs.
Everything the project's runs write (model store, alias, Prefect's files) stays in DEST/.state/, so the
command can run again into another DEST from the same home.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from flows.projects import REPO, copy_project, project_env, unpinned_commit, uv

DEFAULT_DEST = Path("demo-project")


def step(title: str, command: list[str], cwd: Path) -> None:
    print(f"==> {title}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=cwd, env=project_env(), check=True)
    print(f"<== {title} done in {time.monotonic() - started:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "dest", nargs="?", type=Path, default=DEFAULT_DEST, help="where to create the project"
    )
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        sys.exit(f"{dest} exists and is not empty: choose another DEST or remove it")
    started = time.monotonic()
    print(f"==> scaffold: copier copy {REPO} {dest}", flush=True)
    package = copy_project(dest)["package_name"]
    if reason := unpinned_commit(dest):
        sys.exit(reason)
    step("install", [uv(), "sync"], dest)
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
