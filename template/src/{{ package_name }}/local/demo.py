"""Run the whole lifecycle once on embedded defaults, the way it runs in production:

deploy from prefect.yaml -> train -> serve -> clean traffic -> monitor the request log's window (no event) ->
shifted traffic -> monitor that window (drift event) -> the retrain deployment's trigger starts a retrain run
-> wait for it.

A local Prefect server (SQLite, 127.0.0.1) is started unless PREFECT_API_URL points at one; a process worker
and the BentoML service are always started here, and everything started is stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from ..config import Settings, get_settings
from ..registry import aliases, store
from ..training import validation
from . import processes

RETRAIN_DEPLOYMENT = "retrain/retrain"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def demo_batches(settings: Settings, out_dir: Path, rows: int = 300) -> tuple[Path, Path]:
    """A clean batch drawn from the training distribution, and the same rows with numbers shifted."""
    dataset = validation.load_dataset(settings)
    features = dataset.features
    clean = features.sample(min(rows, len(features)), random_state=settings.data.seed).reset_index(drop=True)
    shifted = clean.copy()
    for column in shifted.select_dtypes("number").columns:
        spread = float(features[column].std() or 1.0)
        shifted[column] = shifted[column] + 2.0 * spread
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_path, shifted_path = out_dir / "clean.csv", out_dir / "shifted.csv"
    clean.to_csv(clean_path, index=False)
    shifted.to_csv(shifted_path, index=False)
    return clean_path, shifted_path


def send_requests(base_url: str, batch: Path, rows_per_request: int = 50) -> list[dict[str, Any]]:
    """Every row of `batch` to the service's /predict, as traffic; returns the answers."""
    rows = pd.read_csv(batch)
    records = json.loads(rows.replace({np.nan: None}).to_json(orient="records"))
    answers = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for start in range(0, len(records), rows_per_request):
            response = client.post("/predict", json={"rows": records[start : start + rows_per_request]})
            response.raise_for_status()
            answers.append(response.json())
    return answers


def wait_for_logged(settings: Settings, since: datetime, rows: int, timeout: float = 30) -> int:
    """Wait until the service's request log holds `rows` records since `since` (it writes off the
    request path, a few milliseconds behind the answers)."""
    from ..monitoring.served_traffic import read_window

    path = settings.resolve(settings.serving.request_log_path)
    deadline = time.monotonic() + timeout
    while (found := len(read_window(path, since, datetime.now(UTC)))) < rows:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path}: {found} of {rows} served rows logged after {timeout:g} s")
        time.sleep(0.2)
    return found


async def wait_for_triggered_run(since: datetime, timeout: float) -> dict[str, Any]:
    """Wait for a run of the retrain deployment created after `since`, and for it to finish."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(RETRAIN_DEPLOYMENT)
        run = None
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=since)
                ),
            )
            if runs:
                run = min(runs, key=lambda r: r.created or since)  # the server always sets created
                if run.state and run.state.type.value in TERMINAL:
                    break
            await asyncio.sleep(2)
        if run is None:
            raise TimeoutError(
                f"no run of {RETRAIN_DEPLOYMENT} was started within {timeout:.0f}s of the drift event"
            )
        return {
            "name": run.name,
            "id": str(run.id),
            "state": run.state.type.value if run.state else "UNKNOWN",
            "created_by": run.created_by.type if run.created_by else None,
            "parameters": run.parameters,
        }


async def deployed_schedules() -> dict[str, list[str]]:
    """The cron schedules the server holds per deployment, as `prefect deploy` created them."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployments = await client.read_deployments()
        flows = {f.id: f.name for f in await client.read_flows()}
    return {
        f"{flows[d.flow_id]}/{d.name}": [getattr(s.schedule, "cron", str(s.schedule)) for s in d.schedules]
        for d in deployments
    }


def deploy(settings: Settings, api_url: str) -> None:
    env = processes.prefect_env(api_url)
    prefect = processes.venv_command("prefect")
    pool = processes.work_pool(settings.root)
    processes.run(
        [prefect, "work-pool", "create", pool, "--type", "process", "--overwrite"],
        cwd=settings.root,
        env=env,
        what="work pool",
    )
    processes.run(
        [prefect, "--no-prompt", "deploy", "--all"], cwd=settings.root, env=env, what="prefect deploy --all"
    )


def run_demo(retrain_timeout: float = 600) -> dict[str, Any]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ..flows.monitor import monitor
    from ..flows.train import train

    settings = get_settings()
    root = settings.root
    run_dir = root / ".demo"
    summary: dict[str, Any] = {"started": datetime.now(UTC).isoformat()}
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[demo {time.monotonic() - started:6.1f}s] {message}", flush=True)

    with contextlib.ExitStack() as stack:
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            say("Starting a local Prefect server (SQLite, 127.0.0.1)...")
            api_url = stack.enter_context(
                processes.prefect_server(run_dir / "prefect-home", run_dir / "logs")
            )
        stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
        ui_url = api_url.removesuffix("/api")
        say(f"Prefect UI: {ui_url}")
        pool = processes.work_pool(root)
        say(f"Deploying prefect.yaml to work pool {pool}...")
        deploy(settings, api_url)
        summary["schedules"] = asyncio.run(deployed_schedules())
        say(f"Deployments and their schedules: {summary['schedules']}")
        stack.enter_context(processes.prefect_worker(pool, api_url, root, run_dir / "logs"))

        say("Training (Optuna)...")
        summary["model"] = train(reason="demo")

        say("Serving with BentoML...")
        base = stack.enter_context(
            processes.bentoml_service(
                f"{settings.project.package}.serving.service:Predictor", root, run_dir / "logs"
            )
        )
        clean, shifted = demo_batches(settings, run_dir / "batches")
        served_from = datetime.now(UTC)
        answers = send_requests(base, clean)
        summary["predictions"] = answers[0]["predictions"][:3]
        say(f"Service at {base} answered {sum(len(a['predictions']) for a in answers)} rows of clean traffic")
        wait_for_logged(settings, served_from, len(pd.read_csv(clean)))

        say("Monitoring the clean traffic (the request log's window)...")
        summary["clean"] = monitor(start=served_from)
        if summary["clean"]["event_emitted"]:
            raise RuntimeError(
                f"the clean traffic was reported as drifted: {summary['clean']['drifted_columns']}"
            )
        since = served_from = datetime.now(UTC)
        say("Sending shifted traffic, then monitoring its window...")
        send_requests(base, shifted)
        wait_for_logged(settings, served_from, len(pd.read_csv(shifted)))
        summary["shifted"] = monitor(start=served_from)
        if not summary["shifted"]["event_emitted"]:
            raise RuntimeError("the shifted traffic was not reported as drifted; no retraining would start")
        say(f"Drift event {settings.drift_event} emitted; waiting for the retrain deployment's trigger...")
        summary["retrain"] = retrain = asyncio.run(wait_for_triggered_run(since, retrain_timeout))
        say(
            f"Retrain run {retrain['name']} ended {retrain['state']}, created by {retrain['created_by']} "
            f"with parameters {retrain['parameters']}"
        )
        summary["production"] = aliases.production_tag(settings)
        retrained = store.latest_tag(settings)
        verdict = "promoted" if retrained == summary["production"] else "not promoted: production stays"
        say(f"Retrained model {retrained} {verdict} {summary['production']} (artifact promotion-gate)")
        summary["ui_url"] = ui_url
        say("Stopping the service, the worker and the server...")
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(f"Demo finished in {summary['seconds']} s. The Prefect UI was at {ui_url}.")
    print(
        "To browse the demo's runs, artifacts and events again: "
        f"PREFECT_HOME={run_dir / 'prefect-home'} uv run prefect server start"
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if retrain["state"] != "COMPLETED":
        raise RuntimeError(
            f"retrain flow run {retrain['name']} ended {retrain['state']}; see {run_dir / 'logs'}"
        )
    return summary
