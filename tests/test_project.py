"""A generated project, installed for real: its own tests pass, it trains, serves and refuses bad input.

Each answer set is rendered with its tasks (so `uv lock` writes uv.lock), installed with `uv sync`, and
then used only through its command line and HTTP API, the way a user would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest
import yaml
from conftest import (
    ANSWER_SETS,
    Project,
    explain,
    recorded_answers,
    serving,
    with_library,
)
from test_ci_files import CI_FILE, JOBS_NOT_RUN, RUNNER_ONLY_VARIABLES, job_steps
from test_ci_files import commands as ci_commands
from test_ci_files import jobs as ci_jobs

pytestmark = pytest.mark.slow

INSTALLED_SETS = ["default", "regression_csv"]

# Run inside the project's environment, with the package name as argv[1]; print one JSON line.
# The project's package is imported first: it points BentoML at the project's own model store.
LIST_MODELS = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
import bentoml
print(json.dumps(sorted(str(m.tag) for m in bentoml.models.list(sys.argv[1]))))
"""
# Run in the project's environment: per setting of settings.toml, [config.py's default, the file's value].
DEFAULTS_AND_FILE = with_library("""
import json, sys, tomllib
config = internal("config")
found = {}
for section, values in tomllib.loads(config.SETTINGS_FILE.read_text()).items():
    defaults = config.Settings.model_fields[section].annotation.model_construct().model_dump()
    found.update({f"{section}.{key}": [defaults.get(key), value] for key, value in values.items()})
print(json.dumps(found))
""")
# Settings whose value is a `copier copy` answer: the file holds the answer, the code a default of its own.
ANSWERED = {"project.name", "project.package", "project.template_version", "data.path", "data.target_column"}
ANSWERED |= {
    "data.task_type",
    "data.seed",
    "tuning.model_family",
    "tuning.n_trials",
    "monitoring.drift_threshold",
    "promotion.mode",
}
ANSWERED |= {"monitoring.sample_seed"}
REQUEST_SAMPLE = with_library("""
import json, sys
settings = internal("config").get_settings()
import bentoml
data, registry = (
    internal(m) for m in ("training.validation", "registry.store")
)
schema = bentoml.models.get(registry.latest_tag(settings)).info.metadata["feature_schema"]
rows = data.load_dataset(settings).features.head(5).to_json(orient="records")
print(json.dumps({"schema": schema, "rows": json.loads(rows)}))
""")


@pytest.fixture(scope="module", params=INSTALLED_SETS)
def project(request, installed) -> Project:
    """Installed once per session (test_matrix.py type-checks the answer matrix with these environments)."""
    return installed(ANSWER_SETS[request.param])


@pytest.fixture(scope="module")
def trained(project) -> subprocess.CompletedProcess:
    """One short training run per project; the tests that need a model start from it."""
    return project.cli("train", "--n-trials", "3")


@pytest.fixture(scope="module")
def model(project, trained) -> dict:
    """The trained model's feature schema and a few real training rows to send to it."""
    assert trained.returncode == 0, "training failed, so there is no model to serve:\n" + explain(trained)
    return project.query(REQUEST_SAMPLE)


@pytest.fixture(scope="module")
def service(project, model, tmp_path_factory) -> Iterator[str]:
    with serving(project, tmp_path_factory.mktemp("serve") / "serve.log") as base:
        yield base


def predict(service: str, rows: list[dict]) -> httpx.Response:
    return httpx.post(f"{service}/predict", json={"rows": rows}, timeout=60)


def required_field(schema: dict, kind: str | None = None) -> str:
    """A field every request must carry (not nullable), optionally of one kind (number or category)."""
    return next(
        name for name, spec in schema.items() if not spec["nullable"] and kind in (None, spec["kind"])
    )


def test_copy_task_locks_the_dependencies_and_commits_the_project(project, rendered, request):
    """What the copy task did, checked and not redone: one commit (the task's) holding exactly the files
    Copier rendered plus the uv.lock it wrote, that lock agreeing with pyproject.toml (`uv lock --check`
    resolves and compares; it writes nothing), and no committed file changed since (so neither the install
    nor any later step had to rewrite the lock)."""

    def git(*args: str) -> str:
        result = project.run("git", *args)
        assert result.returncode == 0, explain(result)
        return result.stdout

    assert git("rev-list", "--count", "HEAD").strip() == "1"
    assert git("log", "-1", "--format=%s").strip() == f"{project.root.name}: project from the template"
    committed = set(git("ls-tree", "-r", "--name-only", "HEAD").splitlines())
    copied = rendered(request.node.callspec.params["project"])  # the same answers, rendered without tasks
    files = {str(p.relative_to(copied)) for p in copied.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert committed == files | {"uv.lock"}, committed ^ (files | {"uv.lock"})
    changed = project.run("git", "diff", "--quiet", "HEAD", "--", *sorted(committed))
    assert changed.returncode == 0, git("diff", "--stat", "HEAD", "--", *sorted(committed))
    checked = project.run("uv", "lock", "--check")
    assert checked.returncode == 0, explain(checked)


def test_the_contracts_data_checks_skip_without_data_and_fail_under_require_all_tools(project, tmp_path):
    """data.path naming a file not brought yet: the contract's two data checks skip, as a new user expects;
    with REQUIRE_ALL_TOOLS=1 (the project's CI sets it) the same checks fail, naming the variable."""
    missing = {f"{project.package.upper()}_DATA__PATH": str(tmp_path / "not-brought-yet.csv")}
    command = ("uv", "run", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_contract.py")
    skipped = project.run(*command, "-k", "your_", REQUIRE_ALL_TOOLS="", **missing)
    assert skipped.returncode == 0 and "2 skipped" in skipped.stdout, explain(skipped)
    failed = project.run(*command, "-k", "your_", REQUIRE_ALL_TOOLS="1", **missing)
    assert failed.returncode == 1 and "2 errors" in failed.stdout, explain(failed)  # failed in the fixture
    assert "not-brought-yet.csv does not exist yet: bring your data (REQUIRE_ALL_TOOLS=1)" in failed.stdout


def test_the_generated_settings_file_holds_the_codes_defaults(project):
    """A line deleted from a fresh settings.toml changes nothing. Checked here, on the template, not in the
    project's own tests: a user who changes a value in their settings.toml has not broken anything."""
    found = project.query(DEFAULTS_AND_FILE)
    differ = {key: pair for key, pair in found.items() if pair[0] != pair[1] and key not in ANSWERED}
    assert differ == {}
    assert len(found) > 50  # every section was read


def test_pre_commit_hooks_pass_on_the_fresh_project(project, tmp_path):
    """Every hook is local (the project's locked tools through `uv run`), so it runs offline, and none of
    them finds anything to fix in what Copier wrote."""
    if not (project.root / ".git").is_dir():  # the copy task runs `git init` only where git is installed
        assert project.run("git", "init", "-q").returncode == 0
    staged = project.run("git", "add", "-A")
    assert staged.returncode == 0, explain(staged)
    result = project.run(
        "uv", "run", "pre-commit", "run", "--all-files", PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home")
    )
    assert result.returncode == 0, explain(result)
    assert "Passed" in result.stdout


def test_train_registers_a_model(project, trained):
    assert trained.returncode == 0, explain(trained)
    assert "Registered model" in trained.stdout + trained.stderr  # Prefect logs prints to stderr
    assert len(project.query(LIST_MODELS)) == 1


def test_service_predicts_for_real_rows(service, model):
    response = predict(service, model["rows"])
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == len(model["rows"])


def test_request_missing_a_field_is_refused_naming_it(service, model):
    field = required_field(model["schema"])
    row = {k: v for k, v in model["rows"][0].items() if k != field}
    response = predict(service, [row])
    assert response.status_code == 400, response.text
    assert field in response.text


def test_request_with_a_wrong_type_is_refused_naming_the_field(service, model):
    field = required_field(model["schema"], kind="number")
    response = predict(service, [{**model["rows"][0], field: "not a number"}])
    assert response.status_code == 400, response.text
    assert field in response.text


def test_training_without_the_target_column_fails_and_registers_nothing(project, trained):
    before = project.query(LIST_MODELS)
    variable = f"{project.package.upper()}_DATA__TARGET_COLUMN"
    result = project.cli("train", "--n-trials", "1", **{variable: "nope"})
    assert result.returncode == 2, explain(result)
    assert "'nope'" in result.stderr
    assert project.query(LIST_MODELS) == before


def test_every_ci_job_runs_in_order(project, tmp_path):
    """The project's CI file (GitHub's for one answer set, GitLab's for the other) run as its runner would:
    every job in the file's order, each shell block with the variables the runner sets for it (the test job
    with REQUIRE_ALL_TOOLS=1, the build with the project's model store). The jobs and variables that cannot
    run here are named, with the reason, in test_ci_files.py (JOBS_NOT_RUN, RUNNER_ONLY_VARIABLES), and are
    exactly the ones left out. The project's own suite leaves no scratch store behind."""
    provider = recorded_answers(project.root)["ci_provider"]
    pipeline = yaml.safe_load((project.root / CI_FILE[provider]).read_text())
    runner_only = RUNNER_ONLY_VARIABLES[provider]
    ran, not_run, dropped = [], set(), set()
    for name in ci_jobs(pipeline, provider):
        if name in JOBS_NOT_RUN:
            not_run.add(name)
            continue
        for block, variables in job_steps(pipeline, provider, name, project.root):
            assert "${{" not in block + "".join(variables.values()), (block, variables)
            dropped |= set(variables) & set(runner_only)
            env = {key: value for key, value in variables.items() if key not in runner_only}
            result = project.run("bash", "-eo", "pipefail", "-c", block, TMPDIR=str(tmp_path), **env)
            assert result.returncode == 0, f"{name}: {block}\n{explain(result)}"
            ran.append(block)
    assert not_run == set(JOBS_NOT_RUN) and dropped == set(runner_only), (not_run, dropped)
    expected = [
        ci_commands(pipeline, provider, job) for job in ci_jobs(pipeline, provider) if job not in not_run
    ]
    assert {command for job in expected for command in job} <= {
        line.strip() for b in ran for line in b.splitlines()
    }
    # pytest keeps its own tmp_path folders (pytest-of-<user>) on purpose; the suite's scratch store must go.
    assert sorted(p.name for p in tmp_path.glob(f"{project.package}-tests-*")) == []
