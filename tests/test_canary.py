"""The generator's scheduled workflows: the weekly canary (.github/workflows/canary.yml), valid for GitHub,
weekly, running the scaffold flow with the newest dependency versions the bounds allow; and the nightly
release workflow (.github/workflows/release.yml), which runs the tests CI leaves out."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from test_ci_files import validate

CANARY = REPO / ".github" / "workflows" / "canary.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(CANARY.read_text())


def run_lines(workflow: dict) -> list[str]:
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    return [line.strip() for step in steps if "run" in step for line in step["run"].splitlines()]


def test_the_canary_passes_actionlint():
    result = validate("github", CANARY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_runs_once_a_week_and_by_hand(workflow):
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    (schedule,) = triggers["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert (day, month) == ("*", "*") and weekday.isdigit(), schedule
    assert "workflow_dispatch" in triggers


def test_it_upgrades_the_locks_then_scaffolds_and_tests_a_default_project(workflow):
    lines = run_lines(workflow)
    assert "uv lock --upgrade" in lines
    (scaffold,) = [line for line in lines if "flows.scaffold" in line]
    assert scaffold.startswith("uv run python -m flows.scaffold ") and scaffold.endswith(" --upgrade")
    assert "--data" not in scaffold  # default answers
    assert lines.index("uv lock --upgrade") < lines.index(scaffold)


# The release workflow: the tests CI leaves out (marked `release`), every night and before a tag.
RELEASE = REPO / ".github" / "workflows" / "release.yml"


def test_the_release_workflow_passes_actionlint():
    result = validate("github", RELEASE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_release_workflow_runs_every_test_and_the_full_matrix_every_night():
    workflow = yaml.safe_load(RELEASE.read_text())
    (schedule,) = workflow[True]["schedule"]
    assert schedule["cron"].split()[2:] == ["*", "*", "*"], schedule
    (job,) = workflow["jobs"].values()
    (step,) = [step for step in job["steps"] if "run" in step]
    assert step["run"].strip() == 'bash .ci/run -m ""' and step["env"]["MATRIX"] == "full"
