"""Render and install a project once, and run a benchmark's measurement inside it.

Every benchmark measures the code a user gets: a project copied from this generator's committed HEAD
(a clone holds only committed files; copier would otherwise include uncommitted template edits, and the
project's pin names a commit the repository must have), with default answers, installed with `uv sync`.
The measurement then runs in the project's folder and environment, where `import <package>` binds the
library to the project.

    uv run python benchmarks/<name>.py [--quick] [--project-dir DIR] [--repeats N] [the benchmark's options]
    uv run python benchmarks/_project.py --project-dir DIR [--quick]    (install and train only)

`--project-dir DIR` renders and installs into DIR, or reuses the project already installed there (so
several benchmarks, or a test's runs, share one), and keeps it; without it a temporary folder is used and
removed. `--repeats N` runs the measurement N times in the one project (benchmarks/_repeats.py). Scripts
that need a production model get one with `python -m <package> train` (3 Optuna trials
with --quick, the project's default otherwise) unless the project already has one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import _repeats

REPO = Path(__file__).resolve().parents[1]
# Set (to the project's folder) for a benchmark script running inside the project, and inherited by the
# processes it starts (its own children included); unset, the script installs a project first.
IN_PROJECT = "BENCHMARK_PROJECT"
LEAKY = {"VIRTUAL_ENV", "PREFECT_API_URL", "BENTOML_HOME"}  # the generator's, never the project's


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Project:
    root: Path
    package: str
    env: dict[str, str]

    def run(self, command: list[str], *, capture: bool = True) -> subprocess.CompletedProcess:
        """A command in the project's folder and environment; stderr (progress) goes straight to ours."""
        return subprocess.run(
            command,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            text=True,
            check=False,
        )

    def check(self, command: list[str]) -> str:
        result = self.run(command)
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-4000:])
            raise SystemExit(f"{' '.join(command)} failed with exit code {result.returncode}")
        return result.stdout

    def with_env(self, **extra: str) -> Project:
        """The same project with more environment, e.g. settings named after its package."""
        return Project(self.root, self.package, {**self.env, **extra})

    def python(self, *args: str) -> list[str]:
        """`python ...` in the project's virtualenv (already synced: --no-sync)."""
        return [uv(), "run", "--no-sync", "python", *args]

    def has_production_model(self) -> bool:
        probe = (
            f"import {self.package}\n"
            "from ml_lifecycle._internal.config import get_settings\n"
            "from ml_lifecycle._internal.registry.aliases import production_tag\n"
            "production_tag(get_settings())"
        )
        return self.run(self.python("-c", probe)).returncode == 0


# The project's README install: compiled once, not at every `uv run` (UV_COMPILE_BYTECODE would recompile the
# whole environment each time, astral-sh/uv#12202).
INSTALL = ["sync", "--compile-bytecode", "--quiet"]


def uv() -> str:
    return shutil.which("uv") or sys.exit("uv is required")


def project_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The user's environment without the generator's virtualenv, Prefect API or model store, and with a
    Prefect home of its own under `home` (never the user's)."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env.update(
        PREFECT_HOME=str(home / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.update(extra or {})
    return env


def clone(workdir: Path) -> Path:
    """A clone of the generator's committed HEAD in workdir/template-src (made once)."""
    source = workdir / "template-src"
    if not source.exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(source)], check=True)
    return source


def render(source: Path, root: Path, env: dict[str, str], *, tasks: bool = False) -> str:
    """`copier copy --trust --defaults` of `source` into `root`; returns the package name. `tasks` runs
    copier's tasks (its `uv lock`) as for a user, with plumbum's copy of the environment, which copier uses
    for them, set to the project's `env` for the duration of the copy."""
    import plumbum
    from copier import run_copy

    with plumbum.local.env(**{k: v for k, v in env.items() if k not in LEAKY}):
        for name in LEAKY:
            plumbum.local.env.pop(name, None)
        worker = run_copy(
            str(source),
            str(root),
            defaults=True,
            unsafe=True,
            vcs_ref="HEAD",
            quiet=True,
            skip_tasks=not tasks,
        )
    return worker.answers.combined["package_name"]


def install(workdir: Path, *, tasks: bool = False, extra_env: dict[str, str] | None = None) -> Project:
    """The project in workdir/project: rendered from a clone of HEAD with default answers and `uv sync`ed
    the first time, reused as it is afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "project"
    env = project_env(workdir, extra_env)
    if not (root / ".venv").is_dir():
        log(f"rendering {root} ...")
        render(clone(workdir), root, env, tasks=tasks)
        log("uv sync ...")
        Project(root, "", env).check([uv(), *INSTALL])
    return Project(root, package_of(root), env)


def package_of(root: Path) -> str:
    return tomllib.loads((root / "settings.toml").read_text())["project"]["package"]


def with_model(project: Project, *, quick: bool) -> None:
    """A production model, trained with `python -m <package> train` (3 Optuna trials when `quick`) unless
    the project has one already."""
    if not project.has_production_model():
        log(f"training a production model in {project.root} ...")
        trials = ["--n-trials", "3"] if quick else []
        project.check(project.python("-m", project.package, "train", *trials))


def main(script: str, argv: list[str], *, needs_model: bool) -> int:
    """A benchmark's command from the generator's checkout: install the project (and a production model if
    `needs_model`), then run `script` in it with the other options; its exit code is ours and its stdout
    (the JSON report last) goes straight to ours."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--project-dir", type=Path)
    known, rest = parser.parse_known_args(argv)
    repeats, rest = _repeats.take_repeats(rest)
    workdir = known.project_dir.resolve() if known.project_dir else Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        project = install(workdir)
        if needs_model:
            with_model(project, quick="--quick" in rest)
        inside = project.with_env(**{IN_PROJECT: str(project.root)})
        command = inside.python(str(Path(script).resolve()), *rest)
        if repeats > 1:
            return _repeats.repeat(command, repeats, _repeats.main_goals(), cwd=inside.root, env=inside.env)
        return inside.run(command, capture=False).returncode
    finally:
        if not known.project_dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    # `python benchmarks/_project.py --project-dir DIR [--quick]`: install a project with a production model
    # in DIR for benchmarks to share (tests/conftest.py's benchmark_project), without running one.
    parser = argparse.ArgumentParser(description="install a project with a production model in DIR")
    parser.add_argument("--project-dir", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="train with 3 Optuna trials")
    args = parser.parse_args()
    with_model(install(args.project_dir.resolve()), quick=args.quick)
