"""What `copier copy` writes, for every answer set, checked without installing anything."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import ANSWER_SETS, REPO, package_of
from packaging.specifiers import SpecifierSet

# The tree of a project with default answers; {pkg} is the package name.
DEFAULT_TREE = [
    ".copier-answers.yml",
    ".env.example",
    ".github/workflows/ci.yml",
    ".gitignore",
    ".pre-commit-config.yaml",
    "README.md",
    "data/README.md",
    "deploy/k8s/deployment.yaml",
    "deploy/k8s/hpa.yaml",
    "deploy/k8s/kustomization.yaml",
    "deploy/k8s/service.yaml",
    "docs/benchmarks.md",
    "docs/deploying.md",
    "docs/deployment.md",
    "docs/updating.md",
    "monitoring/alerts.yml",
    "monitoring/grafana/dashboards/{pkg}.json",
    "monitoring/grafana/provisioning/dashboards/dashboards.yml",
    "monitoring/grafana/provisioning/datasources/prometheus.yml",
    "monitoring/prometheus.yml",
    "prefect.yaml",
    "pyproject.toml",
    "settings.toml",
    "src/{pkg}/__init__.py",
    "src/{pkg}/__main__.py",
    "src/{pkg}/dataset.py",
    "src/{pkg}/features.py",
    "src/{pkg}/flows.py",
    "src/{pkg}/model.py",
    "src/{pkg}/service.py",
    "tests/conftest.py",
    "tests/test_contract.py",
    "tests/test_dataset.py",
    "tests/test_features.py",
    "tests/test_model.py",
]

CI_FILES = {"github": {".github/workflows/ci.yml"}, "gitlab": {".gitlab-ci.yml"}, "none": set()}
# The flow image's recipe for container pools, and the Kubernetes worker's base job template.
POOL_FILES = {
    "process": set(),
    "docker": {"deploy/prefect/Dockerfile", "deploy/prefect/Dockerfile.dockerignore"},
    "kubernetes": {
        "deploy/prefect/Dockerfile",
        "deploy/prefect/Dockerfile.dockerignore",
        "deploy/prefect/k8s-base-job-template.json",
    },
}
# Prefect fills in the base job template's placeholders from each deployment's job variables.
PREFECT_JOB_TEMPLATE = "deploy/prefect/k8s-base-job-template.json"
# What `dvc init` makes, and the pipeline: rendered only with use_dvc.
DVC_FILES = {".dvc/config", ".dvc/.gitignore", ".dvcignore", "dvc.yaml"}

# The only Jinja-looking text meant to survive rendering: Prefect fills it in from the drift event.
PREFECT_TEMPLATES = ["{{ event.payload.reason }}", "{{ event.payload.drift_share }}"]

# The README is read in full by a newcomer: short, with the detail in docs/ (STYLE.md: the best are 1-3 KB).
README_MAX_BYTES = 6_000
DOCS_LINK = re.compile(r"\]\((docs/[^)#\s]+)")
# A pointer such as docs/decisions.md#serving-runtime, in code comments, settings and the docs themselves.
DOCS_POINTER = re.compile(r"\b(?:docs/)?(\w+\.md)#([\w-]+)")


def expected_tree(answers: dict) -> set[str]:
    tree = {path.format(pkg=answers["package_name"]) for path in DEFAULT_TREE}
    tree |= POOL_FILES[answers["work_pool_type"]]
    tree = (tree - CI_FILES["github"]) | CI_FILES[answers["ci_provider"]]
    return tree | (DVC_FILES if answers["use_dvc"] else set())


def files_of(project: Path) -> set[str]:
    return {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}


def load_toml(project: Path, name: str) -> dict:
    return tomllib.loads((project / name).read_text())


def load_prefect_yaml(project: Path) -> dict:
    return yaml.safe_load((project / "prefect.yaml").read_text())


def deployment(project: Path, name: str) -> dict:
    (found,) = [d for d in load_prefect_yaml(project)["deployments"] if d["name"] == name]
    return found


def ruff(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The generator's ruff, run in the project so the project's own ruff settings apply."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", "."],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_answers_are_recorded(answers, answer_set):
    assert {k: answers[k] for k in ANSWER_SETS[answer_set]} == ANSWER_SETS[answer_set]


def test_exactly_the_expected_files_are_written(project, answers):
    assert files_of(project) == expected_tree(answers)


def leftover_jinja(name: str, text: str) -> list[str]:
    """The lines of a rendered file that still hold Jinja, apart from what Prefect (the retrain trigger's
    event parameters, once each; the base job template's placeholders) and GitHub fill in themselves."""
    if name == PREFECT_JOB_TEMPLATE:
        return []
    if name == "prefect.yaml":
        for template in PREFECT_TEMPLATES:
            if text.count(template) != 1:
                return [f"the retrain trigger's event parameter {template} {text.count(template)} times"]
            text = text.replace(template, "")
        # Prefect's Secret block references (a docker pool's storage settings), resolved by `prefect deploy`.
        text = re.sub(r"\{\{ prefect\.blocks\.secret\.[a-z0-9-]+\.[A-Z0-9_]+ \}\}", "", text)
    if name == ".github/workflows/ci.yml":  # GitHub's own expressions: ${{ secrets.NAME }}, the checkout
        text = re.sub(r"\$\{\{ (secrets\.[A-Z_]+|github\.workspace) \}\}", "", text)
    return re.findall(r".*(?:\{\{|\{%|\{#).*", text)


def test_no_jinja_is_left_except_prefects_own_event_template(project):
    leftovers = {name: leftover_jinja(name, (project / name).read_text()) for name in files_of(project)}
    assert {name: found for name, found in sorted(leftovers.items()) if found} == {}


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_retrain_is_triggered_by_the_projects_drift_event(project, answers, environment):
    trigger = deployment(project, f"retrain-{environment}")["triggers"][0]
    package = answers["package_name"]
    assert trigger["type"] == "event"
    assert set(trigger["expect"]) == {f"{package}.drift.detected", f"{package}.performance.degraded"}
    # Its own environment's model events only: environments may share one Prefect server.
    assert trigger["match"] == {"prefect.resource.id": f"{package}.model.*", "environment": environment}
    assert trigger["within"] == answers["retrain_cooldown_seconds"]
    assert [trigger["parameters"][name] for name in ("reason", "drift_share")] == PREFECT_TEMPLATES


def test_schedules_and_work_pool_are_the_answered_ones(project, answers):
    """Each environment has its own deployments on its own pool; the schedules are the answered ones,
    paused in dev (tests/test_prefect_yaml.py checks the rest of each environment)."""
    deployments = load_prefect_yaml(project)["deployments"]
    assert {d["name"].rpartition("-")[2] for d in deployments} == set(answers["environments"])
    for environment in answers["environments"]:
        for name in ("train", "monitor"):
            (schedule,) = deployment(project, f"{name}-{environment}")["schedules"]
            assert schedule == {
                "cron": answers[f"{name}_schedule"],
                "timezone": answers["timezone"],
                "active": environment != "dev",
            }
    pools = {d["name"]: d["work_pool"]["name"] for d in deployments if d["name"].endswith("-prod")}
    assert set(pools.values()) == {answers["work_pool"]}


def test_settings_file_holds_the_answered_values(project, answers):
    settings = load_toml(project, "settings.toml")
    assert settings["project"] == {
        "name": answers["project_name"],
        "package": answers["package_name"],
        "template_version": answers["_commit"],
        "environment": "dev",  # runs started from a shell; each environment's deployments set their own
    }
    assert {k: settings["data"][k] for k in ("path", "target_column", "task_type", "seed")} == {
        "path": answers["data_path"],
        "target_column": answers["target_column"],
        "task_type": answers["task_type"],
        "seed": answers["random_seed"],
    }
    assert settings["tuning"]["model_family"] == answers["model_family"]
    assert settings["tuning"]["n_trials"] == answers["n_trials"]
    assert settings["monitoring"]["drift_threshold"] == answers["drift_threshold"]
    assert settings["promotion"]["mode"] == answers["promotion_mode"]  # prefect.yaml sets it per environment
    assert "prefect" not in settings, "schedules and the work pool live in prefect.yaml only"


def test_pyproject_admits_the_chosen_python_and_names_the_package(project, answers):
    pyproject = load_toml(project, "pyproject.toml")
    requires = SpecifierSet(pyproject["project"]["requires-python"])
    assert requires.contains(f"{answers['python_version']}.0")
    assert pyproject["project"]["name"] == answers["package_name"].replace("_", "-")
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + answers["python_version"].replace(".", "")
    service = f"{package_of(project)}.service:Predictor"
    assert pyproject["tool"]["bentoml"]["build"]["service"] == service


def test_pyproject_pins_the_library_at_the_copied_commit(project):
    """The project's one requirement is the library from this template's repository, at a commit."""
    (req,) = load_toml(project, "pyproject.toml")["project"]["dependencies"]
    pin = re.fullmatch(r"ml-lifecycle @ git\+file://localhost(/.+)@[0-9a-f]{40}#subdirectory=runtime", req)
    assert pin is not None, req
    assert Path(pin[1]) == Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [("check",), ("format", "--check")], ids=["check", "format"])
def test_ruff_is_clean_on_the_rendered_project(project, command):
    result = ruff(project, *command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_is_short_and_every_docs_page_it_links_exists(project):
    readme = (project / "README.md").read_bytes()
    assert len(readme) < README_MAX_BYTES, f"README.md is {len(readme)} bytes: move detail to docs/"
    linked = set(DOCS_LINK.findall(readme.decode()))
    assert linked, "the README links no page of docs/"
    assert sorted(page for page in linked if not (project / page).is_file()) == []


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lowercase, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_pointer_to_a_docs_section_names_a_heading_that_exists(project):
    """The project's own pages and the library's guides (runtime/docs/, which the project points at)."""
    pages = [*(project / "docs").glob("*.md"), *(REPO / "runtime" / "docs").glob("*.md")]
    anchors = {
        page.name: {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}
        for page in pages
    }
    dangling = set()
    for name in files_of(project):
        for page, anchor in DOCS_POINTER.findall((project / name).read_text()):
            if anchor not in anchors.get(page, set()):
                dangling.add(f"{name}: {page}#{anchor}")
    assert sorted(dangling) == []
