"""A team's shared infrastructure, on one machine: PostgreSQL behind the Prefect server and Optuna, the
server protected by basic authentication, and one study tuned by two process workers on one pool.

One default project is installed, and one throwaway PostgreSQL cluster (the project's own
local/processes.postgres_server, which its parallel tuning benchmark uses too) holds two databases: `prefect`
for a `prefect server` started with PREFECT_SERVER_API_AUTH_STRING, `optuna` for tuning.storage. Every
client (deploy, workers, the train command) carries the credential in PREFECT_API_AUTH_STRING only.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import (
    REPO,
    Project,
    copy_project,
    explain,
    goals_judged,
    postgres_server,
    prefect_server,
    project_processes,
    stop_group,
    with_library,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PASSWORD = secrets.token_urlsafe(18)  # new each run, so finding it anywhere is a leak of this run
AUTH = f"ml-team:{PASSWORD}"
N_TRIALS = 8
WORKERS = 2


@dataclass(frozen=True)
class Stack:
    project: Project
    postgres: object  # the project's local.processes.Postgres
    api: str
    home: Path

    @property
    def client(self) -> dict[str, str]:
        """What every client of the shared server sets: its URL and the credential, in the environment."""
        return {"PREFECT_API_URL": self.api, "PREFECT_API_AUTH_STRING": AUTH}

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.api}{path}", json=body or {}, auth=tuple(AUTH.split(":", 1)), timeout=30)

    def pg(self, program: str, *args: str) -> str:
        """A PostgreSQL client program (psql, pg_dump) against the cluster, as its superuser."""
        bindir = project_processes().postgres_bindir()
        command = [str(bindir / program), "-h", "127.0.0.1", "-p", str(self.postgres.port), "-U", "postgres"]
        return subprocess.run([*command, *args], capture_output=True, text=True, check=True).stdout.strip()


def tune_deployment(project: Project) -> dict:
    """The first tune deployment in prefect.yaml (dev's, in an environments layout): its name and pool."""
    deployments = yaml.safe_load((project.root / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["entrypoint"].endswith(".flows.tune"))


@pytest.fixture(scope="module")
def stack(default_installed, tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("postgres")
    with postgres_server("prefect", "optuna") as postgres:
        project = copy_project(
            default_installed,
            home,
            home / "prefect-home",
            settings={
                "TUNING__STORAGE": postgres.url("optuna"),
                "TUNING__WORKERS": str(WORKERS),
                "TUNING__TRIALS_PER_TASK": "2",
            },
        )
        tune = tune_deployment(project)
        project.env[f"{project.package.upper()}_TUNING__DEPLOYMENT"] = f"tune/{tune['name']}"
        with prefect_server(
            project,
            home,
            PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres.url("prefect", driver="asyncpg"),
            PREFECT_SERVER_API_AUTH_STRING=AUTH,
        ) as ui_url:
            yield Stack(project, postgres, f"{ui_url}/api", home)


@pytest.fixture(scope="module")
def deployed(stack) -> dict:
    """Every work pool prefect.yaml names (process pools: default answers), then `prefect deploy --all`."""
    deployments = yaml.safe_load((stack.project.root / "prefect.yaml").read_text())["deployments"]
    for pool in sorted({d["work_pool"]["name"] for d in deployments}):
        command = ["uv", "run", "prefect", "work-pool", "create", pool, "--type", "process", "--overwrite"]
        created = stack.project.run(*command, **stack.client)
        assert created.returncode == 0, explain(created)
    result = stack.project.run("uv", "run", "prefect", "--no-prompt", "deploy", "--all", **stack.client)
    assert result.returncode == 0, explain(result)
    return {d["name"]: d for d in deployments}


@contextlib.contextmanager
def process_workers(stack: Stack, pool: str, count: int) -> Iterator[list[Path]]:
    """`prefect worker start` on one pool, `count` times, each taking one flow run at a time (--limit 1);
    yields their log files once the server lists them all."""
    processes, logs = [], []
    try:
        for index in range(count):
            log = stack.home / f"worker-{index}.log"
            command = ["uv", "run", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
            command += ["--name", f"worker-{index}", "--limit", "1"]
            with log.open("wb") as sink:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=stack.project.root,
                        env={**stack.project.env, **stack.client, "PREFECT_WORKER_QUERY_SECONDS": "2"},
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            logs.append(log)
        deadline = time.monotonic() + 120
        while len(stack.post(f"/work_pools/{pool}/workers/filter").json()) < count:
            assert time.monotonic() < deadline, "\n".join(log.read_text()[-2000:] for log in logs)
            time.sleep(1)
        yield logs
    finally:
        for process in processes:  # before the server: a worker whose server is gone ignores SIGTERM
            stop_group(process)


@pytest.fixture(scope="module")
def trained(stack, deployed) -> dict:
    """Two workers on the tune deployment's pool, and `train` from the command line with tuning.workers = 2:
    the train run submits two tune runs there, waits, refits the best trial and registers the model."""
    pool = tune_deployment(stack.project)["work_pool"]["name"]
    started = time.monotonic()
    with process_workers(stack, pool, WORKERS) as logs:
        result = stack.project.cli("train", "--n-trials", str(N_TRIALS), **stack.client)
    assert result.returncode == 0, explain(result)
    tag = re.search(r"Registered model (\S+)", result.stdout + result.stderr)
    assert tag, explain(result)
    study = stack.project.query(
        with_library(
            f"""
import json, sys
import bentoml, optuna
settings = internal("config").get_settings()
metadata = bentoml.models.get({tag.group(1)!r}).info.metadata
study = optuna.load_study(study_name=metadata["study_name"], storage=settings.optuna_storage)
print(json.dumps({{
    "metadata": {{k: metadata[k] for k in ("study_name", "n_trials_finished")}},
    "trials": [
        {{"state": t.state.name, "worker": t.user_attrs.get("worker"),
          "surplus": t.user_attrs.get("surplus", False), "steps": len(t.intermediate_values)}}
        for t in study.trials
    ],
}}))
"""
        ),
        **stack.client,
    )
    runs = stack.post("/flow_runs/filter", {"flows": {"name": {"any_": ["tune"]}}}).json()
    return {
        "study": study,
        "runs": runs,
        "logs": [log.read_text() for log in logs],
        "seconds": time.monotonic() - started,
    }


def test_the_shared_server_refuses_a_client_without_the_credential(stack):
    url = f"{stack.api}/deployments/filter"
    assert httpx.post(url, json={}, timeout=30).status_code == 401
    assert httpx.post(url, json={}, auth=("ml-team", "wrong"), timeout=30).status_code == 401
    assert stack.post("/deployments/filter").status_code == 200
    # The Prefect CLI of a user who has the URL but not the credential gets nothing either.
    refused = stack.project.run("uv", "run", "prefect", "work-pool", "ls", PREFECT_API_URL=stack.api)
    assert refused.returncode != 0, explain(refused)
    assert "401" in refused.stdout + refused.stderr, explain(refused)


def test_deploy_against_the_postgres_backed_server_reads_back_every_deployment(stack, deployed):
    on_server = {
        d["name"]: (d["entrypoint"], d["work_pool_name"]) for d in stack.post("/deployments/filter").json()
    }
    assert on_server == {name: (d["entrypoint"], d["work_pool"]["name"]) for name, d in deployed.items()}
    # They live in PostgreSQL, not in a SQLite file of the server's home.
    assert int(stack.pg("psql", "-d", "prefect", "-tAc", "select count(*) from deployment")) == len(deployed)
    assert not list((stack.home / "prefect-server").rglob("*.db"))


def test_two_workers_tune_one_study_to_exactly_n_trials_and_the_model_is_registered(stack, trained):
    trials = trained["study"]["trials"]
    finished = [t for t in trials if t["state"] in {"COMPLETE", "PRUNED"}]
    assert len(finished) == N_TRIALS, trials
    # Nothing else but a trial two workers created at once for the last place, closed without running.
    assert all(t["surplus"] for t in trials if t not in finished), trials
    # Every trial names the worker that ran it. Which worker gets how many is the workers' race: on a busy
    # machine the second worker can pick up its tune run after the first has filled the study, so both
    # workers running a tune run is checked below on the runs, not on the trials.
    assert {t["worker"] for t in finished} <= set(range(WORKERS)), trials
    assert all(t["steps"] >= 1 for t in finished), "every trial reports its folds to the pruner"
    assert trained["study"]["metadata"]["n_trials_finished"] == N_TRIALS
    print(f"{N_TRIALS} trials on {WORKERS} workers; train command with workers: {trained['seconds']:.0f} s")


def test_the_train_runs_tuning_progress_follows_the_workers_to_the_last_trial(stack, trained):
    """While the workers tune, the train run's `tuning-progress` artifact follows the shared study: at the
    end, every trial finished and the best value so far."""
    body = {"artifacts": {"key": {"any_": ["tuning-progress"]}}, "sort": "CREATED_DESC", "limit": 1}
    found = stack.post("/artifacts/filter", body).json()
    assert found and found[0]["type"] == "progress", found
    assert found[0]["data"] == 100, found
    assert f"{N_TRIALS} of {N_TRIALS} trials finished; best " in found[0]["description"], found


def ran_it(worker_log: str, run_id: str) -> bool:
    """The worker submitted the run and the server let it: two workers polling at once may both submit one
    run, and the one the server refuses logs "Aborted submission" (Prefect's worker)."""
    submitted = f"submitting flow run '{run_id}'" in worker_log
    return submitted and f"Aborted submission of flow run '{run_id}'" not in worker_log


def test_each_worker_ran_one_tune_run_of_the_train_run(stack, trained):
    runs = trained["runs"]
    assert len(runs) == WORKERS, runs
    assert {r["state_type"] for r in runs} == {"COMPLETED"}, runs
    seed = 42  # the default answer random_seed: each worker's sampler is seeded with seed + its index
    assert sorted((r["parameters"]["worker"], r["parameters"]["sampler_seed"]) for r in runs) == [
        (index, seed + index) for index in range(WORKERS)
    ]
    assert all(r["parent_task_run_id"] for r in runs), "the tune runs show as subflows of the train run"
    picked = [{r["id"] for r in runs if ran_it(log, r["id"])} for log in trained["logs"]]
    assert [len(ids) for ids in picked] == [1] * WORKERS, picked
    assert set.union(*picked) == {r["id"] for r in runs}


def test_the_credential_is_written_to_no_file(stack, trained):
    """Deploy, workers and training ran with the credential: none of it may be in the project (the
    .venv aside), the Prefect homes (profiles), or the databases behind the server and Optuna."""
    places = [p for p in stack.project.root.rglob("*") if p.is_file() and ".venv" not in p.parts]
    places += [p for p in (stack.home / "prefect-home").rglob("*") if p.is_file()]
    places += [p for p in (stack.home / "prefect-server").rglob("*") if p.is_file()]
    leaks = [str(p) for p in places if PASSWORD.encode() in p.read_bytes()]
    assert leaks == []
    assert PASSWORD not in stack.pg("pg_dump", "prefect") + stack.pg("pg_dump", "optuna")
    assert json.dumps(trained["runs"]).find(PASSWORD) == -1


def test_the_parallel_tuning_benchmark_run_bare_starts_and_stops_its_own_postgresql(stack):
    """With tuning.storage on SQLite (the default) the benchmark starts a PostgreSQL cluster of its own and
    stops it. Its quick mode checks the wiring, not the P2 goal (the full run, on a quiet machine, does)."""
    default = {
        f"{stack.project.package.upper()}_TUNING__{key}": value
        for key, value in (("STORAGE", "sqlite:///.state/optuna/studies.db"), ("WORKERS", "1"))
    }
    # The generator's benchmark, run inside this project (BENCHMARK_PROJECT) instead of installing its own.
    script = str(REPO / "benchmarks" / "parallel_tuning.py")
    command = ("uv", "run", "--no-sync", "python", script, "--quick")
    result = stack.project.run(*command, timeout=600, BENCHMARK_PROJECT=str(stack.project.root), **default)
    assert result.returncode == 0, explain(result)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.keys() >= {"seconds_1", "seconds_2", "speedup"}, report
    goals_judged(report, {"speedup"})
    assert report["storage"] == "started" and report["finished_1"] == report["finished_2"] == 4, report
    assert sum(report["trials_per_worker_2"]) == 4 and len(report["trials_per_worker_2"]) == 2, report
    assert report["seconds_1"] > 0 and report["seconds_2"] > 0
    port = re.search(r"PostgreSQL started: \S+@127\.0\.0\.1:(\d+)/", result.stderr)
    assert port, explain(result)
    with socket.socket() as sock:  # stopped again
        assert sock.connect_ex(("127.0.0.1", int(port.group(1)))) != 0
