"""The CI files a project gets (answer ci_provider), checked offline as their hosts would read them.

GitHub's workflow goes through actionlint, GitLab's pipeline through the GitLab CI JSON schema that
check-jsonschema bundles; both are the generator's dev dependencies, so this needs no network. Then what
the pipelines promise: lint, type check and tests first, a short training run and `bentoml build` after
them, and only on the main branch a deploy of prod that stops, naming the secret, when one is missing.
Every command in them is one the generator's slow tests run in a generated project (TESTED_COMMANDS):
test_project.py runs every job but the deploy, in order, with the job's variables (JOBS_NOT_RUN says why).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import package_of, render

ANSWERS = {"github": {}, "gitlab": {"ci_provider": "gitlab", "python_version": "3.12"}}
CI_FILE = {"github": ".github/workflows/ci.yml", "gitlab": ".gitlab-ci.yml"}
DEPLOY_PROD = "uv run prefect --no-prompt deploy --name '*-prod'"
# Each command of the CI files, and the generator's test that runs it in a generated project and sees it pass.
EVERY_JOB = "test_project.py::test_every_ci_job_runs_in_order"
TESTED_COMMANDS = {
    "uv sync --locked": EVERY_JOB,
    "uv run ruff check .": EVERY_JOB,
    "uv run ruff format --check .": EVERY_JOB,
    "uv run mypy": EVERY_JOB,
    "uv run pytest": EVERY_JOB,
    "uv run python -m {package} train --n-trials 2": EVERY_JOB,
    "uv run bentoml build": EVERY_JOB,
    DEPLOY_PROD: "test_environments.py::test_deploying_one_environment_leaves_the_other_alone",
}
# The jobs test_every_ci_job_runs_in_order cannot run here, and why; it checks these are all it leaves out.
JOBS_NOT_RUN = {
    "deploy": "needs the team's Prefect server and its secrets: its secret check runs in "
    "test_a_missing_secret_fails_the_deploy_naming_it, the deploy in test_environments.py (a local server)",
}
# Variables of the CI files that only make sense on the runner: not applied when the jobs run here.
RUNNER_ONLY_VARIABLES = {
    "github": {},
    "gitlab": {
        "UV_CACHE_DIR": "the folder GitLab's cache saves between pipelines; here uv keeps the machine's own "
        "cache, and an empty one could not be filled without a network",
    },
}
SECRETS = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")

pytestmark = pytest.mark.parametrize("provider", list(ANSWERS))


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    return {p: render(a, tmp_path_factory.mktemp(p) / "project") for p, a in ANSWERS.items()}


@pytest.fixture
def project(projects, provider) -> Path:
    return projects[provider]


@pytest.fixture
def pipeline(project, provider) -> dict:
    return yaml.safe_load((project / CI_FILE[provider]).read_text())


def tool(name: str) -> str:
    """The generator's own copy of a validator (its virtualenv's bin), else one on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: `uv sync` installs the generator's dev dependencies"
    return found


def validate(provider: str, path: Path) -> subprocess.CompletedProcess:
    if provider == "github":
        command = [tool("actionlint"), "-no-color", str(path)]
    else:
        command = [tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def jobs(pipeline: dict, provider: str) -> dict[str, dict]:
    if provider == "github":
        return pipeline["jobs"]
    return {name: job for name, job in pipeline.items() if isinstance(job, dict) and "script" in job}


def job_lines(pipeline: dict, provider: str, name: str) -> list[str]:
    """The shell lines a job runs, in order (GitLab: the default before_script unless the job has its own)."""
    job = jobs(pipeline, provider)[name]
    if provider == "github":
        blocks = [step["run"] for step in job["steps"] if "run" in step]
    else:
        before = job.get("before_script", pipeline.get("default", {}).get("before_script", []))
        blocks = [*before, *job["script"]]
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def job_steps(pipeline: dict, provider: str, name: str, checkout: Path) -> list[tuple[str, dict[str, str]]]:
    """Each shell block of a job, in order, with the variables its runner sets (workflow or pipeline, job,
    step); the checkout folder and the secrets filled in as the runner does (a secret not set is empty)."""

    def fill(value: object) -> str:
        text = str(value)
        for key in ("${{ github.workspace }}", "$CI_PROJECT_DIR"):
            text = text.replace(key, str(checkout))
        return re.sub(r"\$\{\{ secrets\.\w+ \}\}", "", text)

    job = jobs(pipeline, provider)[name]
    if provider == "github":
        common = {**pipeline.get("env", {}), **job.get("env", {})}
        steps = [(step["run"], {**common, **step.get("env", {})}) for step in job["steps"] if "run" in step]
    else:
        common = {**pipeline.get("variables", {}), **job.get("variables", {})}
        before = job.get("before_script", pipeline.get("default", {}).get("before_script", []))
        steps = [(block, common) for block in [*before, *job["script"]]]
    return [(block, {key: fill(value) for key, value in env.items()}) for block, env in steps]


def commands(pipeline: dict, provider: str, name: str) -> list[str]:
    return [line for line in job_lines(pipeline, provider, name) if line.startswith("uv ")]


def secret_check(pipeline: dict, provider: str) -> str:
    """The deploy job's check of its secrets, as the runner's shell gets it."""
    job = jobs(pipeline, provider)["deploy"]
    if provider == "github":
        (step,) = [s for s in job["steps"] if s.get("name") == "Check the Prefect secrets"]
        return step["run"]
    return job["before_script"][0]


def test_the_file_passes_its_hosts_validator(project, provider):
    result = validate(provider, project / CI_FILE[provider])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_refuses_a_broken_file(project, provider, tmp_path):
    """So a pass above means something: a job needing a job that does not exist, a stage that is no name."""
    broken = yaml.safe_load((project / CI_FILE[provider]).read_text())
    if provider == "github":
        broken["jobs"]["deploy"]["needs"] = ["no-such-job"]
    else:
        broken["deploy"]["stage"] = 42
    path = tmp_path / Path(CI_FILE[provider]).name
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    assert validate(provider, path).returncode != 0


def test_lint_types_and_tests_come_before_the_build_and_the_build_before_the_deploy(pipeline, provider):
    lint = commands(pipeline, provider, "lint")
    assert lint[-2:] == ["uv run ruff check .", "uv run ruff format --check ."]
    assert commands(pipeline, provider, "typecheck")[-1] == "uv run mypy"
    assert commands(pipeline, provider, "test")[-1] == "uv run pytest"
    if provider == "github":
        assert set(pipeline["jobs"]["build"]["needs"]) == {"lint", "typecheck", "test"}
        assert pipeline["jobs"]["deploy"]["needs"] == ["build"]
    else:
        stages = pipeline["stages"]
        stage = {name: stages.index(job["stage"]) for name, job in jobs(pipeline, provider).items()}
        assert max(stage["lint"], stage["typecheck"], stage["test"]) < stage["build"] < stage["deploy"]


def test_the_build_trains_briefly_and_builds_the_bento(pipeline, provider, project):
    assert commands(pipeline, provider, "build")[-2:] == [
        f"uv run python -m {package_of(project)} train --n-trials 2",
        "uv run bentoml build",
    ]


def test_only_the_main_branch_deploys_and_only_prod(pipeline, provider):
    deploy = jobs(pipeline, provider)["deploy"]
    if provider == "github":
        assert deploy["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
        assert deploy["env"] == {name: f"${{{{ secrets.{name} }}}}" for name in SECRETS}
    else:
        assert deploy["rules"] == [{"if": '$CI_COMMIT_BRANCH == "main"'}]
    assert commands(pipeline, provider, "deploy")[-1] == DEPLOY_PROD


@pytest.mark.parametrize(
    ("secrets", "named"),
    [
        ({}, "PREFECT_API_URL and PREFECT_API_KEY or PREFECT_API_AUTH_STRING"),
        ({"PREFECT_API_KEY": "pnu_x"}, "PREFECT_API_URL"),
        ({"PREFECT_API_URL": "http://prefect:4200/api"}, "PREFECT_API_KEY or PREFECT_API_AUTH_STRING"),
        # GitHub passes a secret that is not set as an empty string
        ({"PREFECT_API_URL": "http://prefect:4200/api", "PREFECT_API_KEY": ""}, "PREFECT_API_KEY or"),
    ],
    ids=["none", "no-url", "no-credential", "empty-key"],
)
def test_a_missing_secret_fails_the_deploy_naming_it(pipeline, provider, secrets, named):
    env = {k: v for k, v in os.environ.items() if k not in SECRETS} | secrets
    result = subprocess.run(
        ["sh", "-c", secret_check(pipeline, provider)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert f"The deploy needs the CI secret {named}" in result.stdout


@pytest.mark.parametrize("credential", ["PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"])
def test_the_deploy_goes_on_with_the_url_and_one_credential(pipeline, provider, credential):
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env |= {"PREFECT_API_URL": "http://prefect:4200/api", credential: "secret"}
    result = subprocess.run(
        ["sh", "-c", secret_check(pipeline, provider)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_is_one_the_generators_tests_run(pipeline, provider, project):
    used = {line for name in jobs(pipeline, provider) for line in commands(pipeline, provider, name)}
    tested = {command.format(package=package_of(project)) for command in TESTED_COMMANDS}
    assert used == tested


def test_what_cannot_run_here_names_jobs_and_variables_the_file_has(pipeline, provider, project):
    """JOBS_NOT_RUN and RUNNER_ONLY_VARIABLES stay true to the file: a renamed job or a dropped variable
    fails here, in the fast tier, before test_project.py's run of every job would."""
    assert set(JOBS_NOT_RUN) <= set(jobs(pipeline, provider))
    variables = {
        key
        for name in jobs(pipeline, provider)
        for _, env in job_steps(pipeline, provider, name, project)
        for key in env
    }
    assert set(RUNNER_ONLY_VARIABLES[provider]) <= variables
