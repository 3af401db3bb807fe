"""Scaffold a project as a Prefect flow: copy it with answers, install it, run its own tests, and leave the
outcome as a `scaffold-result` artifact in the Prefect UI.

    uv run python -m flows.scaffold DEST [--data KEY=VALUE ...] [--vcs-ref REF] [--upgrade]

`--upgrade` installs the newest dependency versions the project's bounds allow (`uv lock --upgrade`): the
weekly canary runs it, so an upstream release that breaks generated projects shows there first.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.projects import INSTALL, REPO, copy_project, last_line, run_in, unpinned_commit, uv

PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider"]


@dataclass(frozen=True)
class Scaffolded:
    project: str
    package: str
    template_version: str
    upgraded: bool
    tests_passed: bool
    tests: str  # pytest's summary line, or why the tests did not run
    seconds: float


class ScaffoldFailed(RuntimeError):
    """The project was written but does not install or its tests fail: the artifact says which."""


@task
def copy(dest: Path, answers: dict[str, Any], template: str, vcs_ref: str | None) -> dict[str, Any]:
    """Copier's validators refuse a bad answer here, naming the question and the fix; a copy of uncommitted
    template changes is refused too, since it cannot install."""
    recorded = copy_project(dest, answers, template=template, vcs_ref=vcs_ref)
    if reason := unpinned_commit(dest):
        raise ScaffoldFailed(f"{dest}: {reason}")
    return recorded


@task
def command(project: Path, title: str, argv: list[str]) -> tuple[bool, str]:
    """One of the project's own commands; (succeeded, its last line of output)."""
    result = run_in(project, argv)
    output = last_line(result.stdout) or last_line(result.stderr)
    if result.returncode != 0:
        print(f"{title} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.returncode == 0, output


def report(result: Scaffolded) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in asdict(result).items())
    return f"# Scaffolded {result.project}\n\n| | |\n|---|---|\n{rows}\n"


@flow(name="scaffold", log_prints=True)
def scaffold(
    dest: str,
    answers: dict[str, Any] | None = None,
    template: str = str(REPO),
    vcs_ref: str | None = "HEAD",
    upgrade: bool = False,
    pytest_args: list[str] | None = None,
) -> Scaffolded:
    started = time.monotonic()
    project = Path(dest).resolve()
    recorded = copy(project, answers or {}, template, vcs_ref)
    steps: list[tuple[str, list[str]]] = [("install", [uv(), *INSTALL])]
    if upgrade:
        steps.insert(0, ("upgrade the lock", [uv(), "lock", "--upgrade"]))
    steps.append(("tests", [uv(), "run", "pytest", *(pytest_args or PYTEST_ARGS)]))
    passed, summary = True, ""
    for title, argv in steps:
        passed, summary = command.with_options(name=title)(project, title, argv)
        if not passed:
            summary = f"{title} failed: {summary}"
            break
    result = Scaffolded(
        project=str(project),
        package=str(recorded["package_name"]),
        template_version=str(recorded.get("_commit") or "unknown"),
        upgraded=upgrade,
        tests_passed=passed,
        tests=summary,
        seconds=round(time.monotonic() - started, 1),
    )
    create_markdown_artifact(key="scaffold-result", markdown=report(result), description=str(project))
    if not passed:
        raise ScaffoldFailed(f"{project}: {summary}")
    return result


def parse_data(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE answers as `copier copy --data` takes them; values read as YAML (7: int, true: bool)."""
    answers: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"--data {pair!r}: write it as KEY=VALUE, for example --data task_type=regression")
        answers[key] = yaml.safe_load(value) if value else ""
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.scaffold", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="where to create the project (must not exist yet)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="an answer")
    parser.add_argument("--template", default=str(REPO), help="path or git URL of the template")
    parser.add_argument("--vcs-ref", default="HEAD", help="template version: HEAD (this checkout) or a tag")
    parser.add_argument("--upgrade", action="store_true", help="newest dependencies the bounds allow")
    parser.add_argument("--pytest-args", default=" ".join(PYTEST_ARGS), help="how the project's tests run")
    args = parser.parse_args(argv)
    if args.dest.exists() and any(args.dest.iterdir()):
        sys.exit(f"{args.dest} is not empty: choose a new folder for the project")
    answers = parse_data(args.data)
    pytest_args = shlex.split(args.pytest_args)
    state = scaffold(
        str(args.dest), answers, args.template, args.vcs_ref, args.upgrade, pytest_args, return_state=True
    )
    if state.is_failed():
        print(f"scaffold failed: {state.message}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(asdict(state.result()), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
