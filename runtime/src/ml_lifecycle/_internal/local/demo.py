"""Run the whole lifecycle once on embedded defaults, the way it runs in production:

deploy from prefect.yaml -> train -> serve -> clean labelled traffic -> monitor its window (no event) -> the
world changes (labelled traffic with numbers shifted and another relationship to the target) -> monitor
(drift, performance degraded: events) -> the retrain deployment's trigger starts a retrain run, which learns
from the labelled traffic and is promoted on the recent slice -> the running service switches to it under
steady traffic with no failed request -> monitor the next window (healthy again), before and after printed.

A local Prefect server (SQLite, 127.0.0.1) is started unless PREFECT_API_URL points at one; a process worker
and the BentoML service are always started here, and everything started is stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Settings, get_settings
from ..registry import aliases, store
from ..training import validation
from . import demo_traffic, processes

# The environment of prefect.yaml the demo deploys and runs: dev, on a local process pool
# (docs/deploying.md#environments).
ENVIRONMENT = "dev"
RETRAIN_DEPLOYMENT = f"retrain/retrain-{ENVIRONMENT}"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def demo_batches(settings: Settings, out_dir: Path, rows: int = 300) -> tuple[Path, Path]:
    """A clean batch drawn from the training distribution, and the same rows with numbers shifted (the
    retrain latency benchmark's batches)."""
    dataset = validation.load_dataset(settings)
    features = dataset.features
    clean = features.sample(min(rows, len(features)), random_state=settings.data.seed).reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_path, shifted_path = out_dir / "clean.csv", out_dir / "shifted.csv"
    clean.to_csv(clean_path, index=False)
    demo_traffic.shift_numbers(clean, features).to_csv(shifted_path, index=False)
    return clean_path, shifted_path


def wait_for_logged(settings: Settings, since: datetime, rows: int, timeout: float = 30) -> int:
    """Wait until the service's request log holds `rows` records since `since` (it writes off the
    request path, a few milliseconds behind the answers)."""
    from ..monitoring.served_traffic import read_window

    deadline = time.monotonic() + timeout
    while (found := len(read_window(settings, since, datetime.now(UTC)))) < rows:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the request log in {settings.storage.url}: {found} of {rows} served rows logged after "
                f"{timeout:g} s"
            )
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
            await asyncio.sleep(0.5)  # one cheap query; the run is what the demo waits for
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


async def retrain_signal_time(settings: Settings, since: datetime) -> float:
    """When the first retrain event after `since` occurred (epoch seconds), as the Prefect server holds it:
    the monitor goes on after sending it (report, alert, gauges), and the retrain may finish meanwhile."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[settings.drift_event, settings.performance_event]),
                occurred=EventOccurredFilter(since=since),
            ),
            limit=50,
        )
    if not page.events:
        raise RuntimeError(f"the Prefect server holds no retrain event since {since:%H:%M:%S}")
    return min(event.occurred for event in page.events).timestamp()


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
    pool = processes.work_pool(settings.root, ENVIRONMENT)
    processes.run(
        [prefect, "work-pool", "create", pool, "--type", "process", "--overwrite"],
        cwd=settings.root,
        env=env,
        what="work pool",
    )
    processes.run(
        [prefect, "--no-prompt", "deploy", "--name", f"*-{ENVIRONMENT}"],
        cwd=settings.root,
        env=env,
        what=f"prefect deploy of the {ENVIRONMENT} environment",
    )


def use_demo_settings(settings: Settings, **values: str) -> Settings:
    """Settings for this process and the processes it starts (worker, service) through the environment."""
    prefix = f"{settings.project.package.upper()}_"
    os.environ.update({prefix + key: value for key, value in values.items()})
    get_settings.cache_clear()
    return get_settings()


def performance_threshold(tag: str, task_type: str) -> float:
    """Degraded, for the demo: ROC AUC below 0.85 times the holdout's, or RMSE above 1.5 times it."""
    metrics = store.load(tag).metadata["metrics"]
    if task_type == "regression":
        return round(1.5 * metrics["rmse"], 4)
    return round(0.85 * metrics["roc_auc"], 4)


def performance_of(verdict: dict[str, Any]) -> str:
    performance = verdict.get("performance") or {}
    if performance.get("value") is None:
        return "n/a"
    return f"{performance['metric']} {performance['value']:.3f} on {performance['n_labelled']} labelled rows"


def run_demo(retrain_timeout: float = 600) -> dict[str, Any]:
    """The lifecycle once, as a story: the world changes, the monitor sees drift and worse performance on
    labelled traffic, the triggered retrain learns from that traffic, the gate promotes it on the recent
    slice, the running service switches with no failed request, and the next window is healthy again."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ..flows.monitor import monitor
    from ..flows.train import train

    settings = get_settings()
    root = settings.root
    run_dir = settings.state_dir / "demo"
    run_dir.mkdir(parents=True, exist_ok=True)
    labels_path = run_dir / "labels.csv"
    labels_path.unlink(missing_ok=True)
    # The story's models, alias, request log and reports live in a store of the demo's own, emptied at each
    # run: the project's store keeps the user's production model, and a second demo starts from the model
    # it trains, not from the last demo's retrain on the changed world (whose clean traffic then drifts).
    demo_store = run_dir / "store"
    shutil.rmtree(demo_store, ignore_errors=True)
    settings = use_demo_settings(
        settings,
        STORAGE__URL=str(demo_store),
        MONITORING__LABELS_PATH=str(labels_path),
        ROLLOUT__POLL_SECONDS="1",
        SERVING__REQUEST_LOG_FLUSH_SECONDS="0.5",  # the demo's monitor reads right after its traffic
    )
    target = settings.data.target_column
    summary: dict[str, Any] = {"started": datetime.now(UTC).isoformat()}
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[demo {time.monotonic() - started:6.1f}s] {message}", flush=True)

    def observe(stream: demo_traffic.Stream) -> dict[str, Any]:
        """Send a stream with its labels, then monitor exactly its window."""
        since = datetime.now(UTC)
        demo_traffic.send(base, stream, labels_path, target)
        wait_for_logged(settings, since, len(stream.features))
        verdict = monitor(start=since)
        say(
            f"{stream.name}: drift share {verdict['drift_share']:.2f}, {performance_of(verdict)}, "
            f"model {verdict['model_version']}, retraining asked for: {verdict['event_emitted']}"
        )
        return verdict

    try:
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
            pool = processes.work_pool(root, ENVIRONMENT)
            say(f"Deploying prefect.yaml to work pool {pool}...")
            deploy(settings, api_url)
            summary["schedules"] = asyncio.run(deployed_schedules())
            say(f"Deployments and their schedules: {summary['schedules']}")
            stack.enter_context(processes.prefect_worker(pool, api_url, root, run_dir / "logs"))

            say("Training (Optuna)...")
            summary["model"] = old = train(reason="demo")
            threshold = performance_threshold(old, settings.data.task_type)
            settings = use_demo_settings(settings, MONITORING__PERFORMANCE_THRESHOLD=str(threshold))
            say(f"Performance on labelled traffic counts as degraded past {threshold} (the model's holdout)")

            say("Serving with BentoML...")
            base = stack.enter_context(
                processes.bentoml_service(
                    f"{settings.project.package}.service:Predictor", root, run_dir / "logs"
                )
            )
            # The watch after rollout reads this service's /metrics (per model version).
            settings = use_demo_settings(settings, ROLLOUT__SERVICE_URL=base)
            clean, changed, changed_after = demo_traffic.demo_streams(settings)
            summary["clean"] = observe(clean)
            if summary["clean"]["event_emitted"]:
                drifted = summary["clean"]["drifted_columns"]
                raise RuntimeError(f"the clean traffic asked for retraining (drifted: {drifted})")

            say("The world changes: numbers shift and the target depends on them differently...")
            since = datetime.now(UTC)
            with demo_traffic.SteadyTraffic(base, demo_traffic.as_records(changed_after.features)) as steady:
                summary["shifted"] = observe(changed)
                if not summary["shifted"]["event_emitted"]:
                    raise RuntimeError("the changed traffic asked for no retraining; none would start")
                signalled = asyncio.run(retrain_signal_time(settings, since))
                say("Retraining asked for; waiting for the retrain deployment's trigger and its run...")
                summary["retrain"] = retrain = asyncio.run(wait_for_triggered_run(since, retrain_timeout))
                say(f"Retrain run {retrain['name']} ended {retrain['state']} ({retrain['created_by']})")
                if retrain["state"] != "COMPLETED":
                    raise RuntimeError(
                        f"retrain flow run {retrain['name']} ended {retrain['state']}; see {run_dir / 'logs'}"
                    )
                new = summary["production"] = aliases.production_tag(settings)
                first_answer = steady.wait_for_version(new, timeout=120) if new != old else None
            summary["rollout"] = {
                "old": old,
                "new": new,
                "promoted": new != old,
                "seconds_event_to_serving": round(first_answer - signalled, 1) if first_answer else None,
                "answered_during_switch": steady.answered,
                "failed_during_switch": len(steady.failed),
                "failures": steady.failed[:5],
            }
            if first_answer:
                say(
                    f"Promoted {new}; the service answered with it "
                    f"{summary['rollout']['seconds_event_to_serving']} s after the retrain signal; "
                    f"{steady.answered} answers during the switch, {len(steady.failed)} failed"
                )
            else:  # a family that cannot learn the new relationship beside the old one (a linear model)
                say(
                    f"The retrained model {store.latest_tag(settings)} was not promoted: production stays "
                    f"{old} (see the promotion-gate artifact)"
                )
            summary["after"] = observe(changed_after)
            before, after = summary["shifted"].get("performance"), summary["after"].get("performance")
            summary["learning"] = {
                "metric": (before or {}).get("metric"),
                "before": (before or {}).get("value"),
                "after": (after or {}).get("value"),
                "after_degraded": bool((after or {}).get("below_threshold")),
            }
            say(f"Before: {performance_of(summary['shifted'])}; after: {performance_of(summary['after'])}")
            summary["ui_url"] = ui_url
            say("Stopping the service, the worker and the server...")
        summary["seconds"] = round(time.monotonic() - started, 1)
    finally:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"Demo finished in {summary['seconds']} s. The Prefect UI was at {ui_url}.")
    print(
        "To browse the demo's runs, artifacts and events again: "
        f"PREFECT_HOME={run_dir / 'prefect-home'} uv run prefect server start"
    )
    if steady.failed:
        raise RuntimeError(f"{len(steady.failed)} requests failed during the switch: {steady.failed[:3]}")
    return summary
