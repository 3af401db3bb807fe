"""The generator's main job: scaffold a project with default answers, install it, run its lifecycle once.

    uv run python -m flows.demo [DEST]        (DEST defaults to ./demo-project)

The project's own `demo` command starts (and stops) the local Prefect server, the worker and the BentoML
service, so this script needs no server of its own: its steps are plain functions, each printed as it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from copier import run_copy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = Path("demo-project")


def project_env() -> dict[str, str]:
    """The generator's virtualenv must not leak into the project's `uv run`."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PREFECT_API_URL"}}
    env.setdefault("UV_COMPILE_BYTECODE", "1")  # imports of evidently and prefect are twice as fast
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def scaffold(dest: Path, answers: dict | None = None) -> str:
    """`copier copy` with default answers (plus `answers`); returns the package name."""
    worker = run_copy(
        str(REPO), str(dest), data=answers or {}, defaults=True, unsafe=True, vcs_ref="HEAD", quiet=True
    )
    return worker.answers.combined["package_name"]


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        sys.exit("uv is required: pip install uv")
    return found


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
    package = scaffold(dest)
    step("install", [uv(), "sync"], dest)
    try:
        step("lifecycle", [uv(), "run", "python", "-m", package, "demo"], dest)
    except subprocess.CalledProcessError as exc:
        print(
            f"The demo failed (exit {exc.returncode}); logs are in {dest / '.demo' / 'logs'}", file=sys.stderr
        )
        return exc.returncode
    print(f"Done in {time.monotonic() - started:.0f} s. The project is in {dest}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
