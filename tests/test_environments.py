"""Each environment of prefect.yaml deployed to a real Prefect server, and read back through its API.

One project answers kubernetes for its pools, one GPU and three environments (dev, staging, prod); it is
installed with its `worker` dependency group (prefect-kubernetes), and one `prefect server start`
(SQLite) serves the module. A second rendering of the same package with a docker pool is deployed with
the installed project's Prefect, from its own folder. Read back: the deployments of each environment with
their work pools, schedules, parameters, tags, pull steps and job variables, the retrain trigger's
automation, and the Kubernetes Job that the real Kubernetes worker code builds from the pool's base job
template, validated against Kubernetes' schemas. No Docker engine or cluster is here: no image is built
and no container runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import (
    EVALUATION_WATCH,
    Project,
    explain,
    install_project,
    prefect_server,
    recorded_answers,
    render,
    run,
    with_library,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ANSWERS = {
    "work_pool_type": "kubernetes",
    "gpus": 1,
    "environments": ["dev", "staging", "prod"],
    "flow_image": "registry.example.com/ml/my-ml-project-flows:1.0",
    "train_schedule": "30 2 * * 1-5",
    "monitor_schedule": "*/20 * * * *",
    "timezone": "Europe/Berlin",
    "retrain_cooldown_seconds": 900,
}
DOCKER_ANSWERS = {"work_pool_type": "docker", "flow_image": "registry.example.com/ml/flows:2.0"}
BASE_JOB_TEMPLATE = "deploy/prefect/k8s-base-job-template.json"
# Where prefect deploy finds the store for staging and prod (their pools run containers; a folder is refused).
# Only its form is checked at deploy time: nothing is read from it here.
SHARED_STORE = {"MY_ML_PROJECT_STORAGE__URL": "s3://team-ml/my-ml-project"}
# The oldest Kubernetes release still commonly run and the newest the validator knows (as tests/test_k8s.py).
K8S_VERSIONS = ["1.29", kubernetes_validate.utils.latest_version()]

# Run in the project's environment with PREFECT_API_URL set; prints one JSON line.
READ_BACK = """
import asyncio, json
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as client:
        flows = {f.id: f.name for f in await client.read_flows()}
        deployments = await client.read_deployments()
        names = {d.id: d.name for d in deployments}
        found = {}
        for d in deployments:
            limit = d.global_concurrency_limit
            found[d.name] = {
                "id": str(d.id),
                "flow": flows[d.flow_id],
                "updated": d.updated.isoformat(),
                "work_pool": d.work_pool_name,
                "tags": sorted(d.tags),
                "parameters": d.parameters,
                "job_variables": d.job_variables,
                "pull_steps": d.pull_steps,
                "schedules": [
                    {"cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
                    for s in d.schedules
                ],
                "concurrency": limit and [limit.limit, str(d.concurrency_options.collision_strategy.value)],
                "triggers": [],
            }
        for automation in await client.read_automations():
            for action in automation.actions:
                if getattr(action, "deployment_id", None) in names:
                    trigger = automation.trigger.model_dump(mode="json")
                    trigger["expect"] = sorted(trigger["expect"])
                    trigger["parameters"] = action.parameters
                    trigger["automation"] = str(automation.id)
                    found[names[action.deployment_id]]["triggers"].append(trigger)
        pools = {
            p.name: {"type": p.type, "variables": sorted(p.base_job_template["variables"]["properties"])}
            for p in await client.read_work_pools()
        }
    print(json.dumps({"deployments": found, "pools": pools}))

asyncio.run(main())
"""

# Run in the project's environment: a drift event about a model, posted with the monitor's own code; once the
# server has finished evaluating it (EVALUATION_WATCH), print the names of the automations it fired and the
# deployment name of each retrain run.
DRIFT_EVENT_THEN_RETRAINS = with_library(
    EVALUATION_WATCH
    + """
import asyncio, json

settings = internal("config").get_settings()
events = internal("monitoring.events")


async def retrain_runs():
    async with get_client() as client:
        names = {d.id: d.name for d in await client.read_deployments()}
        runs = [names.get(r.deployment_id, "") for r in await client.read_flow_runs()]
        return sorted(name for name in runs if name.startswith("retrain-"))


with EvaluationWatch() as watch:
    payload = {"reason": "drift in a test", "drift_share": 0.5}
    resource = internal("registry.store").event_resource(settings, "v-test")
    drift = Event(event=settings.drift_event, resource=resource, payload=payload)
    events.post_event(drift)
    watch.wait_until_evaluated([drift.id])
fired = until("the drift event fired an automation", lambda: automations_fired_by(drift.id))
runs = until("a retrain run exists", lambda: asyncio.run(retrain_runs()))
print(json.dumps({"fired": fired, "runs": runs}))
"""
)

# The Job the Kubernetes worker would submit for a run of argv[2] (flow/deployment): prefect-kubernetes'
# own job configuration, from the pool's base job template on the server and the deployment's job variables.
KUBERNETES_JOB = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

async def main():
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(sys.argv[2])
        pool = await client.read_work_pool(deployment.work_pool_name)
        flow = await client.read_flow(deployment.flow_id)
        run = await client.create_flow_run_from_deployment(deployment.id)
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(
            pool.base_job_template, deployment.job_variables
        )
        config.prepare_for_flow_run(run, deployment, flow, pool)
    print(json.dumps(config.job_manifest))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("environments")


@pytest.fixture(scope="module")
def project(home, prefect_home, default_installed) -> Project:
    installed = install_project(ANSWERS, home, prefect_home, venv_from=default_installed)
    worker = installed.run("uv", "sync", "--group", "worker")
    assert worker.returncode == 0, explain(worker)
    return installed


@pytest.fixture(scope="module")
def api_url(project, home) -> Iterator[str]:
    with prefect_server(project, home) as ui_url:
        yield f"{ui_url}/api"


@pytest.fixture(scope="module")
def answers(project) -> dict:
    return recorded_answers(project.root)


def prefect(project: Project, api_url: str, *args: str, cwd: Path | None = None, **env: str):
    """The project's Prefect CLI against the test's server, from the project folder or `cwd`."""
    command = [str(project.root / ".venv" / "bin" / "prefect"), *args]
    environ = {**project.env, "PREFECT_API_URL": api_url, **env}
    return run(command, cwd=cwd or project.root, env=environ, timeout=300)


def pool_of(answers: dict, environment: str) -> str:
    return answers["work_pool"] + ("" if environment == "prod" else f"-{environment}")


def create_pool(project: Project, api_url: str, answers: dict, environment: str) -> None:
    name = pool_of(answers, environment)
    if environment == "dev":
        args = ["--type", "process"]
    else:  # the pool type is served by Prefect's server itself: no prefect-kubernetes needed for this step
        args = ["--type", "kubernetes", "--base-job-template", str(project.root / BASE_JOB_TEMPLATE)]
    created = prefect(project, api_url, "work-pool", "create", name, *args, "--overwrite")
    assert created.returncode == 0, explain(created)


def deploy(project: Project, api_url: str, environment: str, cwd: Path | None = None) -> None:
    result = prefect(
        project, api_url, "--no-prompt", "deploy", "--name", f"*-{environment}", cwd=cwd, **SHARED_STORE
    )
    assert result.returncode == 0, explain(result)


def read_back(project: Project, api_url: str) -> dict:
    return project.query(READ_BACK, PREFECT_API_URL=api_url)


def in_prefect_yaml(root: Path) -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]}


@pytest.fixture(scope="module")
def deployed(project, api_url, answers) -> dict:
    """Every environment deployed, one `prefect deploy --name '*-<environment>'` each."""
    for environment in answers["environments"]:
        create_pool(project, api_url, answers, environment)
        deploy(project, api_url, environment)
    return read_back(project, api_url)


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
def test_each_environment_has_its_deployments_on_its_pool_with_the_answered_schedules(
    deployed, answers, project, environment
):
    mine = {n: d for n, d in deployed["deployments"].items() if n.endswith(f"-{environment}")}
    assert {d["flow"] for d in mine.values()} >= {"train", "monitor", "retrain"}
    assert {n: d["flow"] + f"-{environment}" for n, d in mine.items()} == {n: n for n in mine}
    assert {d["work_pool"] for d in mine.values()} == {pool_of(answers, environment)}
    assert all(d["tags"] == [environment] for d in mine.values())
    active = environment != "dev"  # dev's schedules are paused: it runs what its users start
    for flow in ("train", "monitor"):
        assert mine[f"{flow}-{environment}"]["schedules"] == [
            {"cron": answers[f"{flow}_schedule"], "timezone": answers["timezone"], "active": active}
        ]
    assert mine[f"retrain-{environment}"]["schedules"] == []
    expected = {"reason": "scheduled"} | ({"n_trials": min(answers["n_trials"], 5)} if not active else {})
    assert mine[f"train-{environment}"]["parameters"] == expected
    # Everything else is what prefect.yaml says, merged from its anchors.
    written = in_prefect_yaml(project.root)
    for name, found in mine.items():
        assert found["job_variables"] == written[name]["work_pool"]["job_variables"], name


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_kubernetes_environments_carry_the_answered_job_variables(deployed, answers, environment):
    pool = deployed["pools"][pool_of(answers, environment)]
    assert pool["type"] == "kubernetes"
    for name, found in deployed["deployments"].items():
        if not name.endswith(f"-{environment}"):
            continue
        variables = found["job_variables"]
        assert variables["image"] == answers["flow_image"]
        assert variables["gpu_limit"] == answers["gpus"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in variables[
            "tolerations"
        ]
        assert {"cpu_request", "memory_request", "cpu_limit", "memory_limit", "node_selector"} <= set(
            variables
        )
        # A job variable the pool's template has no place for would be dropped without a word at run time.
        assert set(variables) <= set(pool["variables"]), name
        # Runs start in the image's project folder, not in the folder `prefect deploy` ran in.
        assert found["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}
        ]


def test_dev_runs_on_a_process_pool_in_the_project_folder(deployed, answers, project):
    assert deployed["pools"][pool_of(answers, "dev")]["type"] == "process"
    for name, found in deployed["deployments"].items():
        if name.endswith("-dev"):
            assert found["pull_steps"] == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(project.root)}}
            ]


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
def test_each_retrain_has_the_answered_trigger_and_one_run_at_a_time(deployed, answers, environment):
    found = deployed["deployments"][f"retrain-{environment}"]
    (trigger,) = found["triggers"]
    package = answers["package_name"]
    assert trigger["match"] == {"prefect.resource.id": f"{package}.model.*", "environment": environment}
    assert set(trigger["expect"]) == {f"{package}.drift.detected", f"{package}.performance.degraded"}
    assert (trigger["posture"], trigger["threshold"]) == ("Reactive", 1)
    assert trigger["within"] == answers["retrain_cooldown_seconds"]
    assert trigger["parameters"] == {
        "reason": "{{ event.payload.reason }}",
        "drift_share": "{{ event.payload.drift_share }}",
    }
    assert found["concurrency"] == [1, "CANCEL_NEW"]


def test_a_drift_event_from_one_environment_retrains_that_environment_only(deployed, project, api_url):
    """Environments sharing one Prefect server: staging's monitor (its runs have the variable set, as
    prefect.yaml does) reports drift; staging's retrain starts, dev's and prod's do not."""
    staging = {f"{project.package.upper()}_PROJECT__ENVIRONMENT": "staging"}
    found = project.query(DRIFT_EVENT_THEN_RETRAINS, PREFECT_API_URL=api_url, **staging)
    assert found["runs"] == ["retrain-staging"], found
    assert len(found["fired"]) == 1, found  # staging's automation only: dev's and prod's did not fire


def test_deploying_one_environment_leaves_the_other_alone(deployed, project, api_url):
    """A redeploy of prod updates prod's deployments and recreates prod's trigger (a new automation, same
    content); dev's deployments and dev's automation stay exactly as they were, and the other way round."""
    for target, other in (("prod", "dev"), ("dev", "prod")):
        before = read_back(project, api_url)["deployments"]
        deploy(project, api_url, target)
        after = read_back(project, api_url)["deployments"]
        assert set(after) == set(before), "a deploy of one environment added or removed deployments"
        untouched = {n: d for n, d in before.items() if n.endswith(f"-{other}")}
        assert {n: after[n] for n in untouched} == untouched
        redeployed = [n for n in before if n.endswith(f"-{target}")]
        assert all(after[n]["updated"] > before[n]["updated"] for n in redeployed)
        (old,), (new,) = before[f"retrain-{target}"]["triggers"], after[f"retrain-{target}"]["triggers"]
        assert new.pop("automation") != old.pop("automation")
        assert new == old


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_the_job_the_kubernetes_worker_builds_is_valid_kubernetes(
    deployed, project, api_url, answers, environment
):
    result = project.run(
        "uv",
        "run",
        "python",
        "-c",
        KUBERNETES_JOB,
        project.package,
        f"train/train-{environment}",
        PREFECT_API_URL=api_url,
    )
    assert result.returncode == 0, explain(result)
    job = json.loads(result.stdout.strip().splitlines()[-1])
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(job, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"the Job does not validate against Kubernetes {version}: {path}: {error.message}")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == answers["flow_image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == answers["gpus"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert job["metadata"]["namespace"] == "default"
    # The store's settings and credentials from the environment's Secret, as the service's pods; no volume.
    secret = "my-ml-project-storage" + ("" if environment == "prod" else f"-{environment}")
    assert container["envFrom"] == [{"secretRef": {"name": secret}}]
    assert "volumes" not in pod and "volumeMounts" not in container


def test_a_folder_store_is_refused_when_deploying_to_the_kubernetes_pool(deployed, project, api_url):
    """storage.url left at the project's folder while prod runs on kubernetes: `prefect deploy` stops at the
    library's build step with one line naming storage.url and the fix, and prod stays as it was."""
    before = read_back(project, api_url)
    refused = prefect(project, api_url, "--no-prompt", "deploy", "--name", "*-prod")
    assert refused.returncode != 0, explain(refused)
    store = (project.root / ".state" / "store").resolve().as_uri()
    assert refused.stderr.strip().splitlines()[-1] == (
        f"storage.url = '{store}' is a folder, but runs on a kubernetes pool each have a disk of their own: "
        "set storage.url (settings.toml [storage], or MY_ML_PROJECT_STORAGE__URL) to s3://bucket/prefix, "
        "gs://bucket/prefix or az://container/prefix (runtime/docs/scaling.md)"
    ), explain(refused)
    assert "Traceback" not in refused.stdout + refused.stderr, explain(refused)
    assert read_back(project, api_url) == before


def test_the_base_job_template_keeps_every_variable_of_prefects_default(project):
    """Ours is Prefect's default for Kubernetes plus nodeSelector, tolerations and the GPU: nothing a
    Kubernetes pool's users expect from the default is gone."""
    result = project.run(
        "uv", "run", "prefect", "work-pool", "get-default-base-job-template", "--type", "kubernetes"
    )
    assert result.returncode == 0, explain(result)
    default = json.loads(result.stdout[result.stdout.index("{") :])
    ours = json.loads((project.root / BASE_JOB_TEMPLATE).read_text())
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(ours["variables"]["properties"]) - set(default["variables"]["properties"]) == {
        "node_selector",
        "tolerations",
        "gpu_limit",
        "env_from",
    }
    assert set(default["job_configuration"]) == set(ours["job_configuration"])


def test_a_docker_pool_gets_the_image_as_answered(project, api_url, home, deployed):
    """Prefect's server knows the docker pool type without prefect-docker installed; prod of a project
    answering docker is deployed from its own folder with the installed project's Prefect. Last in this
    module: it points prod's deployments at the docker pool."""
    docker = render({**DOCKER_ANSWERS, "work_pool": "docker-pool"}, home / "docker-project")
    created = prefect(
        project, api_url, "work-pool", "create", "docker-pool", "--type", "docker", "--overwrite"
    )
    assert created.returncode == 0, explain(created)
    # The runs' store settings, in the Prefect Secret block prefect.yaml reads them from on a docker pool.
    store = {**SHARED_STORE, "AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": "secret"}
    block = f"from prefect.blocks.system import Secret; Secret(value={store!r}).save('my-ml-project-storage')"
    saved = project.run("uv", "run", "python", "-c", block, PREFECT_API_URL=api_url)
    assert saved.returncode == 0, explain(saved)
    before = read_back(project, api_url)
    deploy(project, api_url, "prod", cwd=docker)
    after = read_back(project, api_url)
    assert after["pools"]["docker-pool"]["type"] == "docker"
    prod = {n: d for n, d in after["deployments"].items() if n.endswith("-prod")}
    assert {d["work_pool"] for d in prod.values()} == {"docker-pool"}
    for name, found in prod.items():
        assert found["job_variables"]["image"] == DOCKER_ANSWERS["flow_image"]
        # Resolved by prefect deploy from the block (so stored in the deployment: runtime/docs/scaling.md).
        assert store.items() <= found["job_variables"]["env"].items(), name
        assert set(found["job_variables"]) <= set(after["pools"]["docker-pool"]["variables"]), name
    dev = {n: d for n, d in before["deployments"].items() if n.endswith("-dev")}
    assert {n: after["deployments"][n] for n in dev} == dev
