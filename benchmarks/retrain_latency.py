"""Benchmark P6: how soon a drifted batch starts retraining, next to Prefect's own floor.

    uv run python benchmarks/retrain_latency.py [--rounds 3] [--timeout 300] [--quick] [--keep]

Needs a production model (`python -m <package> train` promotes one). It starts its own Prefect servers
(SQLite, 127.0.0.1, a temporary home each) and never uses the one PREFECT_API_URL points at.

Goal P6: ratio_to_floor <= 2.

Each round runs on a fresh server, because the retrain trigger's `within` (its cooldown, copier answer
retrain_cooldown_seconds) absorbs every matching event after the first, from any model, for that long:
a second drift event on the same server would start nothing. In a round: `prefect deploy` of the dev
environment of the project's prefect.yaml (local.demo.deploy: work pool and deployments, the retrain
trigger included), then a
trivial `floor` deployment (the flow in this file, run from the project folder like the others) on the
same work pool, whose trigger is a copy of the retrain trigger (posture, threshold, within, parameters,
the concurrency limit) matching a benchmark-only event instead; then one process worker for both
(local.processes.prefect_worker: it polls every PREFECT_WORKER_QUERY_SECONDS, reported as
`worker_query_seconds`), and one untimed run of the floor deployment, so the worker is known to be
polling and has started a flow run once. Then, in alternating order from round to round, each path on
an idle worker (no flow run process of the one before left):
- `seconds`: a run of the monitor deployment (`run_deployment("monitor/monitor-dev")`, as its schedule
  would start it) on the shifted batch of local.demo.demo_batches, from the monitor flow run's start time to
  the start time of the retrain flow run its drift event made the trigger create (created by AUTOMATION).
  It covers the drift check in the flow run (its verdict: Evidently is imported with the flow's module,
  before the run starts, and its report is built after the event), the event, the trigger, the worker's
  next poll and the retrain flow run's process start and imports.
- `floor_seconds`: one bare event emitted from this process (emit_event), from the event's time to the
  start time of the floor flow run its trigger created: the same trigger, worker poll and process start,
  without our flow's work and imports: the least any triggered run costs on this machine.
`phases` splits each path at the event's time (the emitter's clock), its arrival at the server and the
triggered run's creation (medians over rounds): `drift_check` (monitor start -> event), `delivery` (event
-> received by the server), `trigger` (received -> run created by the automation), `start` (run created
-> run started: the worker's poll, the process start and the flow's imports); `floor_delivery`,
`floor_trigger` and `floor_start` likewise.

Keys: `seconds` and `floor_seconds` are medians over the rounds (3; one with --quick), `ratio_to_floor`
divides them; `rounds` holds each round's figures, order and runs (with the monitor run's task runs:
when each started and how long it ran); `goal_met`, `worker_query_seconds`,
`trigger` (the retrain trigger's posture, threshold and within), `model`, `rows`, `cpu_count` and
`load_average` (1 min, before and after) describe the run.

The retrain run is cancelled as soon as it has started, so no model is trained by the benchmark; as a
second guard the worker's runs get a promotion margin no model can beat, a temporary Optuna storage and
reports folder, and no alerts or Pushgateway pushes (a benchmark pages nobody). Every process started is
stopped: servers and worker by process group, flow runs (sessions of their own) by a marker in their
environment. The last line printed is one JSON object; the exit code is non-zero only on errors (no
production model, a server that does not start, no retrain run), never because the goal was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import ROOT, clean_up, kill_leftovers, load_project, log, production_tag, ratio, run
from ml_lifecycle._internal.bench.goals import verdicts
from prefect import flow

GOALS = {"ratio_to_floor": ("<=", 2.0)}  # with --repeats, judged on the median (_repeats.py)
# The environment local/demo.py deploys (its ENVIRONMENT), whose deployments the rounds run.
ENVIRONMENT = "dev"
MONITOR_DEPLOYMENT = f"monitor/monitor-{ENVIRONMENT}"
RETRAIN_DEPLOYMENT = f"retrain/retrain-{ENVIRONMENT}"
FLOOR_FLOW = "retrain-latency-floor"
FLOOR_DEPLOYMENT = f"{FLOOR_FLOW}/floor"
FLOOR_EVENT = "retrain-latency-benchmark.ping"
FLOOR_RESOURCE = "retrain-latency-benchmark.resource"
MARKER = "RETRAIN_LATENCY_BENCHMARK_RUN"  # in every process' environment, so leftovers can be found by it
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Figures come from the server's timestamps, so polling more often would add load to the server, not
# precision.
POLL_SECONDS = 1.0


@flow(name=FLOOR_FLOW)
def floor(reason: str = "manual", drift_share: float | None = None) -> None:
    """Does nothing: the floor deployment's flow, with the retrain flow's parameters."""


# --- deployments -----------------------------------------------------------------------------------------


def retrain_trigger(prefect_yaml: dict) -> tuple[dict, dict]:
    """The retrain deployment of prefect.yaml (the demo's environment) and its event trigger."""
    for deployment in prefect_yaml.get("deployments", []):
        if deployment.get("name") == RETRAIN_DEPLOYMENT.split("/")[1]:
            triggers = [t for t in deployment.get("triggers") or [] if t.get("type", "event") == "event"]
            if triggers:
                return deployment, triggers[0]
    raise RuntimeError(f"prefect.yaml has no `{RETRAIN_DEPLOYMENT}` deployment with an event trigger")


def floor_prefect_yaml(prefect_yaml: dict, path: Path) -> None:
    """A prefect.yaml with one deployment: the floor flow, on retrain's work pool, with retrain's trigger
    (posture, threshold, within, parameters) listening to the benchmark's own event."""
    retrain, trigger = retrain_trigger(prefect_yaml)
    deployment = {
        "name": "floor",
        "description": "Benchmark P6: a trivial flow started by an event trigger (Prefect's floor).",
        "entrypoint": f"{Path(__file__).resolve()}:floor",  # this file, in the generator's checkout
        "work_pool": retrain["work_pool"],
        "triggers": [
            trigger | {"match": {"prefect.resource.id": f"{FLOOR_RESOURCE}.*"}, "expect": [FLOOR_EVENT]}
        ],
    }
    if "concurrency_limit" in retrain:
        deployment["concurrency_limit"] = retrain["concurrency_limit"]
    path.write_text(
        json.dumps({"name": prefect_yaml.get("name", "bench"), "deployments": [deployment]}, indent=2)
    )


def deploy(demo, localstack, settings, api_url: str, floor_file: Path) -> None:
    demo.deploy(settings, api_url)  # work pool + `prefect deploy` of the dev environment of prefect.yaml
    localstack.run(
        [
            localstack.venv_command("prefect"),
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(floor_file),
        ],
        cwd=ROOT,
        env=localstack.prefect_env(api_url),
        what="prefect deploy of the floor deployment",
    )


# --- flow runs -------------------------------------------------------------------------------------------


def state_of(run) -> str:
    return run.state.type.value if run.state else "UNKNOWN"


def wait_for_state(client, run_id, states: set[str], timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if state_of(run) in states:
            return run
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what} ({run_id}) did not reach {sorted(states)} within {timeout:.0f} s")


def triggered_run(client, deployment: str, timeout: float, what: str, watch=None):
    """The first run of `deployment` created by an automation, once it has started (its start_time set).
    `watch` is called while waiting and may raise, e.g. when the run that should cause it failed."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deployment_id = client.read_deployment_by_name(deployment).id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
        runs = [r for r in runs if r.created_by and r.created_by.type == "AUTOMATION"]
        if runs:
            run = min(runs, key=lambda r: r.created)
            if run.start_time is not None:
                return run
            if state_of(run) in TERMINAL:
                raise RuntimeError(
                    f"{what} {run.name} ended {state_of(run)} without starting: {run.state.message}"
                )
        if watch is not None:
            watch()
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"no {what} started within {timeout:.0f} s")


def event_times(client, name: str) -> tuple[datetime, datetime] | None:
    """When the first event called `name` occurred (the emitter's clock) and when the server received it."""
    from prefect.events.filters import EventFilter, EventNameFilter

    page = client.read_events(filter=EventFilter(event=EventNameFilter(name=[name])), limit=10)
    first = min(page.events, key=lambda e: e.occurred, default=None)
    return (first.occurred, first.received) if first is not None else None


def cancel(client, run, timeout: float) -> str:
    """Cancel a started flow run (the worker stops its process); returns the state it ended in."""
    from prefect.states import Cancelling

    client.set_flow_run_state(run.id, Cancelling(message="retrain latency benchmark: measured, not needed"))
    with contextlib.suppress(RuntimeError):
        return state_of(wait_for_state(client, run.id, TERMINAL, timeout, "the cancelled retrain run"))
    return state_of(client.read_flow_run(run.id))


def seconds_between(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds(), 3)


def measure_floor(client, round_no: int, timeout: float) -> dict:
    from prefect.events import emit_event

    event = emit_event(
        event=FLOOR_EVENT,
        resource={"prefect.resource.id": f"{FLOOR_RESOURCE}.round-{round_no}"},
        payload={"reason": "retrain latency benchmark: the floor", "drift_share": 1.0},
    )
    if event is None:
        raise RuntimeError("emit_event sent nothing: is PREFECT_API_URL set?")
    run = triggered_run(client, FLOOR_DEPLOYMENT, timeout, "floor run")
    wait_for_state(client, run.id, TERMINAL, timeout, "the floor run")
    _, received = event_times(client, FLOOR_EVENT) or (None, None)
    return {
        "floor_seconds": seconds_between(event.occurred, run.start_time),
        "floor_phases": {
            "floor_delivery": seconds_between(event.occurred, received) if received else None,
            "floor_trigger": seconds_between(received or event.occurred, run.created),
            "floor_start": seconds_between(run.created, run.start_time),
        },
        "floor_run": run.name,
    }


def measure_retrain(client, drift_event: str, shifted: Path, timeout: float) -> dict:
    from prefect.deployments import run_deployment

    monitor = run_deployment(MONITOR_DEPLOYMENT, parameters={"current_path": str(shifted)}, timeout=0)

    def monitor_ok() -> None:
        run = client.read_flow_run(monitor.id)
        if state_of(run) in TERMINAL - {"COMPLETED"}:
            raise RuntimeError(f"monitor run {run.name} ended {state_of(run)}: {run.state.message}")

    retrain = triggered_run(client, RETRAIN_DEPLOYMENT, timeout, "retrain run", watch=monitor_ok)
    final = cancel(client, retrain, timeout=60)
    if final != "CANCELLED":
        log(f"warning: the retrain run {retrain.name} ended {final}, not CANCELLED")
    monitor = wait_for_state(client, monitor.id, TERMINAL, timeout, "the monitor run")
    emitted = event_times(client, drift_event)
    tasks = task_timeline(client, monitor)
    phases = {"drift_check": None, "delivery": None, "trigger": None}
    if emitted is not None:
        occurred, received = emitted
        phases = {
            "drift_check": seconds_between(monitor.start_time, occurred),
            "delivery": seconds_between(occurred, received),
            "trigger": seconds_between(received, retrain.created),
        }
    return {
        "seconds": seconds_between(monitor.start_time, retrain.start_time),
        "phases": phases | {"start": seconds_between(retrain.created, retrain.start_time)},
        "monitor_run": {"name": monitor.name, "state": state_of(monitor), "tasks": tasks},
        "retrain_run": {
            "name": retrain.name,
            "created_by": retrain.created_by.type,
            "parameters": retrain.parameters,
            "final_state": final,
        },
    }


def task_timeline(client, run) -> list[dict]:
    """The monitor run's task runs: when each started after the run did and how long it ran, to show
    where the time before the drift event goes."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    timeline = [
        {
            "task": task.name,
            "started_after": seconds_between(run.start_time, task.start_time),
            "seconds": round(task.total_run_time.total_seconds(), 3),
        }
        for task in tasks
        if task.start_time is not None
    ]
    return sorted(timeline, key=lambda entry: entry["started_after"])


def warm_up(client, timeout: float) -> None:
    """One untimed run of the floor deployment: the worker polls, and has started a flow run once."""
    from prefect.deployments import run_deployment

    run = run_deployment(FLOOR_DEPLOYMENT, timeout=0)
    run = wait_for_state(client, run.id, TERMINAL, timeout, "the warm-up run (is the worker polling?)")
    if state_of(run) != "COMPLETED":
        raise RuntimeError(f"the warm-up run {run.name} ended {state_of(run)}: {run.state.message}")


# --- processes -------------------------------------------------------------------------------------------


def failed_actions(logs: Path) -> str:
    """The server's "Action failed" lines: the only trace of a trigger whose run could not be created."""
    with contextlib.suppress(OSError):
        lines = (logs / "prefect-server.log").read_text(errors="replace").splitlines()
        failed = [line.strip() for line in lines if "Action failed" in line]
        if failed:
            return "; the server logged: " + " | ".join(failed[-3:])
    return ""


def worker_setting(worker, name: str) -> str | None:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(worker.process.pid).environ().get(name)
    return None


def wait_idle(worker, timeout: float) -> None:
    """Wait until the worker runs no flow run (the previous path's, cancelled ones included, have exited),
    so the next path starts on an idle worker."""
    import psutil

    deadline = time.monotonic() + timeout
    with contextlib.suppress(psutil.Error):
        while psutil.Process(worker.process.pid).children(recursive=True):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker still runs a flow run after {timeout:.0f} s")
            time.sleep(0.25)


def run_round(round_no: int, ctx: dict[str, Any], floor_first: bool) -> dict:
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    localstack, settings, work = ctx["localstack"], ctx["settings"], ctx["work"]
    logs = work / f"round-{round_no}" / "logs"
    began = time.monotonic()
    result: dict[str, Any] = {"round": round_no, "order": "floor first" if floor_first else "monitor first"}
    try:
        with (
            localstack.prefect_server(work / f"round-{round_no}" / "prefect-home", logs) as api_url,
            temporary_settings({PREFECT_API_URL: api_url}),
        ):
            deploy(ctx["demo"], localstack, settings, api_url, ctx["floor_file"])
            with (
                localstack.prefect_worker(
                    localstack.work_pool(ROOT, ENVIRONMENT), api_url, ROOT, logs
                ) as worker,
                ctx["get_client"](sync_client=True) as client,
            ):
                ctx["worker_query_seconds"] = worker_setting(worker, "PREFECT_WORKER_QUERY_SECONDS")
                warm_up(client, ctx["timeout"])
                log(
                    f"round {round_no}: server, deployments and worker up in {time.monotonic() - began:.1f} s"
                )
                steps = [
                    lambda: measure_floor(client, round_no, ctx["timeout"]),
                    lambda: measure_retrain(client, settings.drift_event, ctx["shifted"], ctx["timeout"]),
                ]
                for step in steps if floor_first else reversed(steps):
                    wait_idle(worker, ctx["timeout"])
                    result.update(step())
    except RuntimeError as exc:
        raise RuntimeError(f"round {round_no}: {exc}{failed_actions(logs)} (logs in {logs})") from exc
    finally:
        EventsWorker.drain_all(timeout=10, at_exit=False)  # its client points at this round's server
        kill_leftovers(MARKER, ctx["run_id"])
    result["ratio_to_floor"] = ratio(result["seconds"], result["floor_seconds"])
    log(
        f"round {round_no} ({result['order']}): monitor start -> retrain start {result['seconds']} s "
        f"{result['phases']}; floor {result['floor_seconds']} s {result['floor_phases']}; "
        f"ratio {result['ratio_to_floor']}; round took {time.monotonic() - began:.0f} s"
    )
    return result


# --- the report ------------------------------------------------------------------------------------------


def median_of(rounds: list[dict], key: str, sub: str | None = None) -> float | None:
    values = [(r[key][sub] if sub else r[key]) for r in rounds]
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh server (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for each run (default 300)"
    )
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(
        signal.SIGTERM, lambda *_: sys.exit(143)
    )  # so servers and worker are stopped on SIGTERM too

    import yaml
    from prefect.client.orchestration import get_client

    _, settings, modules = load_project("local.demo", "local.processes")
    demo, localstack = modules["demo"], modules["processes"]
    tag = production_tag(settings, modules["aliases"])
    if tag is None:
        return 2

    run_id = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="retrain-latency-"))
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    _, trigger = retrain_trigger(prefect_yaml)
    floor_file = work / "floor.prefect.yaml"
    floor_prefect_yaml(prefect_yaml, floor_file)
    _, shifted = demo.demo_batches(settings, work / "batches")
    with shifted.open() as lines:
        rows = sum(1 for _ in lines) - 1
    prefix = modules["config"].ENV_PREFIX
    # Inherited by the worker and its flow runs: nothing the benchmark starts leaves a trace in the project.
    os.environ.update(
        {
            MARKER: run_id,
            f"{prefix}MONITORING__PUSHGATEWAY_URL": "",
            f"{prefix}ALERTS__WEBHOOK_BLOCK": "",
            f"{prefix}ALERTS__WEBHOOK_ENV": "",
            f"{prefix}TUNING__STORAGE": f"sqlite:///{work / 'optuna.db'}",
            f"{prefix}REGISTRY__PROMOTION_MARGIN": "1e9",
        }
    )
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    ctx = {
        "localstack": localstack,
        "demo": demo,
        "settings": settings,
        "work": work,
        "floor_file": floor_file,
        "shifted": shifted,
        "timeout": args.timeout,
        "run_id": run_id,
        "get_client": get_client,
    }
    load_before = os.getloadavg()[0]
    log(f"model {tag}; {args.rounds} round(s), each on a fresh Prefect server; work folder {work}")
    rounds = []
    try:
        for round_no in range(1, args.rounds + 1):
            rounds.append(run_round(round_no, ctx, floor_first=round_no % 2 == 1))
    finally:
        clean_up(MARKER, run_id, work, args.keep)

    seconds, floor_seconds = median_of(rounds, "seconds"), median_of(rounds, "floor_seconds")
    report = {
        "seconds": seconds,
        "floor_seconds": floor_seconds,
        "ratio_to_floor": ratio(seconds, floor_seconds),
        "phases": {
            key: median_of(rounds, "phases", key) for key in ("drift_check", "delivery", "trigger", "start")
        }
        | {
            key: median_of(rounds, "floor_phases", key)
            for key in ("floor_delivery", "floor_trigger", "floor_start")
        },
        "rounds": rounds,
        "worker_query_seconds": float(ctx["worker_query_seconds"]) if ctx["worker_query_seconds"] else None,
        "trigger": {key: trigger.get(key) for key in ("posture", "threshold", "within")},
        "model": tag,
        "rows": rows,
        "cpu_count": os.cpu_count(),
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    report |= verdicts(report, GOALS)
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    run(main, needs_model=True)
