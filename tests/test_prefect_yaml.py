"""prefect.yaml per answer set, read as Prefect reads it (YAML anchors and merge keys resolved): one set of
deployments per answered environment, each on its environment's pool with the job variables its pool type
needs, and the files a container pool needs beside it. tests/test_environments.py deploys them for real.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import jsonschema
import pytest
import yaml

FLOWS = {"train", "monitor", "retrain"}
BASE_JOB_TEMPLATE = "deploy/prefect/k8s-base-job-template.json"
IMAGE_PULL = [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]


@pytest.fixture
def deployments(project) -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]}


def in_environment(deployments: dict[str, dict], environment: str) -> dict[str, dict]:
    return {name: d for name, d in deployments.items() if name.endswith(f"-{environment}")}


def test_every_flow_is_deployed_once_per_environment(deployments, answers):
    environments = answers["environments"]
    assert {"dev", "prod"} <= set(environments)
    for environment in environments:
        mine = in_environment(deployments, environment)
        flows = {d["entrypoint"].rsplit(".", 1)[1] for d in mine.values()}
        assert flows >= FLOWS
        assert set(mine) == {f"{flow}-{environment}" for flow in flows}
    assert sum(len(in_environment(deployments, e)) for e in environments) == len(deployments)


def test_dev_is_a_process_pool_with_paused_schedules_and_few_trials(deployments, answers):
    dev = in_environment(deployments, "dev")
    assert {d["work_pool"]["name"] for d in dev.values()} == {answers["work_pool"] + "-dev"}
    assert all("image" not in d["work_pool"]["job_variables"] and "pull" not in d for d in dev.values())
    assert all(s["active"] is False for d in dev.values() for s in d.get("schedules", []))
    assert dev["train-dev"]["parameters"]["n_trials"] == min(answers["n_trials"], 5)


def test_each_environment_sets_who_promotes(deployments, answers):
    """dev (the demo's) promotes what passes the gate; staging and prod as the answer says (by default a
    person approves in the Prefect UI)."""
    variable = f"{answers['package_name'].upper()}_PROMOTION__MODE"
    for environment in answers["environments"]:
        expected = "auto" if environment == "dev" else answers["promotion_mode"]
        for name, deployment in in_environment(deployments, environment).items():
            assert deployment["work_pool"]["job_variables"]["env"][variable] == expected, name


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_staging_and_prod_run_on_the_answered_pool_type(deployments, answers, environment, project):
    if environment not in answers["environments"]:
        assert not in_environment(deployments, environment)
        return
    mine = in_environment(deployments, environment)
    pool = answers["work_pool"] + ("" if environment == "prod" else f"-{environment}")
    assert {d["work_pool"]["name"] for d in mine.values()} == {pool}
    assert all(s["active"] is True for d in mine.values() for s in d.get("schedules", []))
    for name, deployment in mine.items():
        variables = deployment["work_pool"]["job_variables"]
        if answers["work_pool_type"] == "process":
            assert "image" not in variables and "pull" not in deployment, name
            continue
        assert variables["image"] == answers["flow_image"], name
        assert deployment["pull"] == IMAGE_PULL, name  # the image's project folder (deploy/prefect/)
        if answers["work_pool_type"] == "kubernetes":
            assert {"cpu_request", "memory_request", "cpu_limit", "memory_limit"} <= set(variables), name
            assert isinstance(variables["node_selector"], dict) and isinstance(variables["tolerations"], list)
            assert variables.get("gpu_limit", 0) == answers["gpus"], name
            gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            assert (gpu_taint in variables["tolerations"]) == bool(answers["gpus"]), name


def test_kubernetes_job_variables_fit_the_pools_base_job_template(project, deployments, answers):
    """What Prefect's server checks a deployment's job variables against, and where the worker puts them:
    a variable the template does not declare would be dropped without a word."""
    if answers["work_pool_type"] != "kubernetes":
        assert not (project / BASE_JOB_TEMPLATE).exists()  # only a kubernetes pool gets one of its own
        return
    template = json.loads((project / BASE_JOB_TEMPLATE).read_text())
    schema = template["variables"]
    placeholders = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert placeholders == set(schema["properties"])
    for name, deployment in deployments.items():
        if name.endswith("-dev"):
            continue
        variables = deployment["work_pool"]["job_variables"]
        assert set(variables) <= set(schema["properties"]), name
        jsonschema.validate(variables, schema)


def test_the_flow_image_is_built_where_the_runs_start(project, answers):
    dockerfile = project / "deploy" / "prefect" / "Dockerfile"
    if answers["work_pool_type"] == "process":
        assert not dockerfile.exists()
        return
    text = dockerfile.read_text()
    assert f"FROM ghcr.io/astral-sh/uv:python{answers['python_version']}-bookworm-slim" in text
    assert "WORKDIR /app" in text and "uv sync --locked --no-dev" in text
    assert f"-t {answers['flow_image']} ." in text
    # The build reaches the pinned library: git is installed before the first `uv sync`, and a local template
    # comes in as a named build context at the very path the pin's git+file URL names.
    assert text.index("install -y -qq --no-install-recommends git") < text.index("RUN uv sync")
    pin = re.search(r"git\+file://localhost(/[^@\"]+)@", (project / "pyproject.toml").read_text())
    assert pin is not None, "a project copied from this checkout pins a local repository"
    folder = urllib.parse.unquote(pin.group(1))
    assert f'COPY --from=template [".", {json.dumps(folder)}]' in text
    build = f'-f deploy/prefect/Dockerfile --build-context template="{folder}" -t {answers["flow_image"]} .'
    assert build in text and build in (project / "docs" / "deploying.md").read_text()


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
def test_container_pools_carry_the_storage_settings_and_refuse_a_folder_at_deploy(
    deployments, answers, environment
):
    """On a docker or kubernetes pool every run gets the store's URL and credentials from a secret (a
    Kubernetes Secret through envFrom; a Prefect Secret block on docker) and no volume, and `prefect deploy`
    runs the library's check first (tests/test_environments.py deploys it for real)."""
    if environment not in answers["environments"]:
        return
    package = answers["package_name"]
    secret = (
        package.replace("_", "-").strip("-")
        + "-storage"
        + ("" if environment == "prod" else f"-{environment}")
    )
    shared = environment != "dev" and answers["work_pool_type"] != "process"
    for name, deployment in in_environment(deployments, environment).items():
        variables = deployment["work_pool"]["job_variables"]
        assert "volumes" not in variables, name
        if not shared:
            assert "build" not in deployment and "env_from" not in variables, name
            assert not any(key.startswith("AWS_") for key in variables["env"]), name
            continue
        (step,) = deployment["build"]
        check = step[f"{package}.flows.require_shared_storage"]
        assert check["pool_type"] == answers["work_pool_type"], name
        if answers["work_pool_type"] == "kubernetes":
            assert variables["env_from"] == [{"secretRef": {"name": secret}}], name
            assert "storage_url_override" not in check, name
            continue
        from_block = f"{{{{ prefect.blocks.secret.{secret}.%s }}}}"
        url = f"{package.upper()}_STORAGE__URL"
        for key in (url, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert variables["env"][key] == from_block % key, name
        assert check["storage_url_override"] == from_block % url, name
