"""The monitoring loop on real servers, as a platform team runs it: a Prefect server of its own, a
Pushgateway and Prometheus scraping it, a webhook receiver for the alerts, and the project's demo pointed
at all of them (`PREFECT_API_URL`, `monitoring.pushgateway_url`, the alert webhook variable).

The demo deploys the rendered prefect.yaml, starts a process worker and the service, sends clean traffic
(monitor: no event, no retrain) and shifted traffic (monitor: event; the trigger's retrain run completes and
learns it), then more of the changed traffic, on the retrained model (monitor: no drift, no alert).
Then this module checks what the rest of the stack saw, sends a storm of 20 drift events (at most one
retrain), and opens the Prefect UI in Debian's Chromium: the retrain run, the drift report, and each picture
the runs showed (loaded by the browser, not a broken image).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import (
    EVALUATION_WATCH,
    Project,
    explain,
    free_port,
    install_project,
    prefect_server,
    require_tool,
    started,
    with_library,
)
from prefect_ui import capture_artifact_pictures, capture_prefect_ui

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Short, so the storm below comes after the demo's own event has left the window; the answer is rendered
# into prefect.yaml's trigger (`within`) exactly as a user's would be.
COOLDOWN_SECONDS = 20
STORM_EVENTS = 20
OUTPUT = Path(__file__).parent / "output"


@dataclass
class Receiver:
    """A webhook endpoint on loopback that keeps every JSON body posted to it."""

    url: str
    bodies: list[dict] = field(default_factory=list)


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
            length = int(self.headers.get("Content-Length", 0))
            receiver.bodies.append(json.loads(self.rfile.read(length) or b"null"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/SECRET"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()


def prometheus_config(project: Project, folder: Path, pushgateway: str) -> Path:
    """The project's monitoring/prometheus.yml (and its alert rules), pointed at this test's Pushgateway and
    scraping every second, so the test need not wait 15 s per scrape."""
    config = yaml.safe_load((project.root / "monitoring" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        if "pushgateway" in job["job_name"]:
            job["static_configs"] = [{"targets": [pushgateway]}]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    (folder / "alerts.yml").write_text((project.root / "monitoring" / "alerts.yml").read_text())
    return path


@dataclass
class Stack:
    project: Project
    api_url: str
    prometheus: str
    receiver: Receiver
    summary: dict
    demo: object


@pytest.fixture(scope="module")
def stack(default_installed, tmp_path_factory, prefect_home) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus")
    pushgateway_bin = require_tool("prometheus-pushgateway")
    home = tmp_path_factory.mktemp("e2e")
    logs = home / "logs"
    logs.mkdir()
    answers = {"retrain_cooldown_seconds": COOLDOWN_SECONDS}
    project = install_project(answers, home, prefect_home, venv_from=default_installed)
    gateway_port, prometheus_port = free_port(), free_port()
    gateway = f"127.0.0.1:{gateway_port}"
    with contextlib.ExitStack() as stack, webhook_receiver() as receiver:
        stack.enter_context(
            started(
                [pushgateway_bin, f"--web.listen-address={gateway}"],
                cwd=home,
                env=project.env,
                log=logs / "pushgateway.log",
                ready_url=f"http://{gateway}/-/ready",
            )
        )
        config = prometheus_config(project, home / "prometheus", gateway)
        stack.enter_context(
            started(
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={home / 'prometheus' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                cwd=home,
                env=project.env,
                log=logs / "prometheus.log",
                ready_url=f"http://127.0.0.1:{prometheus_port}/-/ready",
            )
        )
        api_url = stack.enter_context(prefect_server(project, home)) + "/api"
        prefix = project.package.upper()
        # The demo keeps its story in a store of its own: what this module reads after it is there.
        demo_store = project.root / ".state" / "demo" / "store"
        project = Project(
            project.root, project.package, {**project.env, f"{prefix}_STORAGE__URL": str(demo_store)}
        )
        demo = project.cli(
            "demo",
            PREFECT_API_URL=api_url,
            **{
                f"{prefix}_MONITORING__PUSHGATEWAY_URL": f"http://{gateway}",
                f"{prefix}_ALERT_WEBHOOK_URL": receiver.url,
            },
        )
        summary_file = project.root / ".state" / "demo" / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        yield Stack(project, api_url, f"http://127.0.0.1:{prometheus_port}", receiver, summary, demo)


def flow_runs(api_url: str, deployment: str, since: datetime) -> list[dict]:
    """Runs of one deployment (by name, e.g. "retrain-dev", the demo's environment) created after `since`,
    through Prefect's REST API."""
    response = httpx.post(
        f"{api_url}/flow_runs/filter",
        json={
            "deployments": {"name": {"any_": [deployment]}},
            "flow_runs": {"expected_start_time": {"after_": since.isoformat()}},
        },
        timeout=30,
    )
    response.raise_for_status()
    return [run for run in response.json() if datetime.fromisoformat(run["created"]) >= since]


def test_clean_traffic_asks_for_nothing_and_shifted_traffic_retrains(stack):
    assert stack.demo.returncode == 0, explain(stack.demo)
    summary = stack.summary
    assert summary["clean"]["source"].startswith("request log")
    assert summary["clean"]["event_emitted"] is False
    assert summary["shifted"]["event_emitted"] is True
    retrain = summary["retrain"]
    assert (retrain["state"], retrain["created_by"]) == ("COMPLETED", "AUTOMATION"), retrain


def test_prometheus_scraped_the_monitors_drift_gauges(stack):
    metric = f"{stack.project.package}_drift_share"
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": metric}, timeout=10)
        result = response.json()["data"]["result"]
        if result or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result, (
        f"Prometheus has no {metric}; targets: {httpx.get(f'{stack.prometheus}/api/v1/targets').text}"
    )
    # The last push was the verdict on the traffic after the retrain: the model learned it, no drift.
    assert float(result[0]["value"][1]) == pytest.approx(stack.summary["after"]["drift_share"])
    assert stack.summary["after"]["drift_share"] < stack.summary["shifted"]["drift_share"]


def test_the_webhook_received_the_drift_alert(stack):
    texts = [body["text"] for body in stack.receiver.bodies]
    assert len(texts) == 1, texts  # the shifted traffic's run only; the clean one alerts nobody
    assert "drift" in texts[0].lower()
    assert stack.summary["shifted"]["model_version"] in texts[0]


def test_a_storm_of_drift_events_starts_at_most_one_retrain(stack):
    """20 events in a second, after the demo's own event left the cooldown window: the first fires the
    trigger, the others are absorbed (the concurrency limit would cancel any second run)."""
    retrain_events = [f"{stack.project.package}.{e}" for e in ("drift.detected", "performance.degraded")]
    found = httpx.post(
        f"{stack.api_url}/events/filter",
        json={"filter": {"event": {"name": retrain_events}}, "limit": 50},
        timeout=30,
    )
    found.raise_for_status()
    last = max(datetime.fromisoformat(e["occurred"]) for e in found.json()["events"])
    window_ends = last + timedelta(seconds=COOLDOWN_SECONDS + 1)  # the demo's own event's window
    while datetime.now(UTC) < window_ends:  # the cooldown is measured in time: wait for the clock to pass it
        time.sleep(0.5)
    storm_started = datetime.now(UTC)
    fired = stack.project.query(
        EVALUATION_WATCH
        + f"""
import json, sys
from prefect.events import emit_event
import {stack.project.package}  # the project first: importing it binds the library
from ml_lifecycle import get_settings
from ml_lifecycle._internal.registry.aliases import production_tag
from ml_lifecycle._internal.registry.store import event_resource
settings = get_settings()
tag = production_tag(settings)
with EvaluationWatch() as watch:
    events = [
        emit_event(
            event=settings.drift_event,
            resource=event_resource(settings, tag),  # the monitor's own: the model and its environment (dev)
            payload={{"reason": f"storm {{i}}", "drift_share": 1.0}},
        )
        for i in range({STORM_EVENTS})
    ]
    assert all(e is not None for e in events), events
    watch.wait_until_evaluated([e.id for e in events])
until("the storm fired an automation", lambda: any(automations_fired_by(e.id) for e in events))
print(json.dumps([name for e in events for name in automations_fired_by(e.id)]))
""",
        PREFECT_API_URL=stack.api_url,
    )
    assert len(fired) == 1, fired  # the first event fired the trigger; the server has evaluated all 20
    deadline = time.monotonic() + 60
    while not (runs := flow_runs(stack.api_url, "retrain-dev", storm_started)):
        assert time.monotonic() < deadline, "the storm's trigger fired, but no retrain run was created"
        time.sleep(1)
    assert len(runs) == 1, [(r["name"], r["parameters"]) for r in runs]
    assert runs[0]["parameters"]["reason"].startswith("storm")


def test_the_prefect_ui_shows_the_retrain_run_and_the_drift_report(stack):
    """What a person opening the Prefect UI sees, in a real browser (Debian's Chromium, headless)."""
    require_tool("chromium")
    screenshot = OUTPUT / "e2e-prefect-ui.png"
    seen = capture_prefect_ui(
        stack.api_url.removesuffix("/api"),
        flow_run_name_contains=stack.summary["retrain"]["name"],
        artifact_key="drift-report",
        screenshot=screenshot,
    )
    assert seen["flow_run"]["state"] == "Completed", seen["flow_run"]
    # The latest drift report: the monitor run after the retrain, which learned the changed world.
    assert "Drift check: no drift" in seen["artifact"]["text"], seen["artifact"]["text"][:500]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the Prefect UI: {screenshot}")


# The pictures the demo's runs show (train and retrain, the monitor runs, the watch after the retrain's
# promotion), as the library names their artifacts (reports/pictures.py).
PICTURES = ("tuning-history", "parameter-importances", "holdout-curve", "drift-per-column", "rollout-watch")


def test_the_prefect_ui_shows_each_picture_of_the_runs(stack):
    """Each picture's artifact page in Chromium: its <img> loaded and decoded (naturalWidth > 0), a
    screenshot per picture kept in tests/output/pictures/ (runtime/docs/ui.md shows them)."""
    require_tool("chromium")
    seen = capture_artifact_pictures(stack.api_url.removesuffix("/api"), list(PICTURES), OUTPUT / "pictures")
    for key in PICTURES:
        (image,) = seen[key]["images"]  # one picture per artifact, shown
        assert image["src"].startswith("data:image/png;base64,"), image
        assert image["width"] == 800 and image["height"] > 200, image  # the PNG's own size, decoded
        assert seen[key]["screenshot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshots of the pictures in the Prefect UI: {OUTPUT / 'pictures'}")


# ---- The replay before promotion and a person's approval (promotion.mode), on the demo's server.


def artifacts(api_url: str, key: str, flow_run_id: str | None = None) -> list[dict]:
    """The artifacts with `key` (of one flow run, when given), newest first, through Prefect's REST API."""
    found: dict = {"key": {"any_": [key]}}
    if flow_run_id:
        found["flow_run_id"] = {"any_": [flow_run_id]}
    response = httpx.post(
        f"{api_url}/artifacts/filter", json={"artifacts": found, "sort": "CREATED_DESC"}, timeout=30
    )
    response.raise_for_status()
    return response.json()


def test_the_retrain_replayed_the_served_requests_before_its_promotion(stack):
    """The demo's retrain after drift was promoted after its replay: candidate and production scored the
    requests `bentoml serve` logged, and stayed within promotion.max_disagreement and max_latency_ratio."""
    assert stack.summary["rollout"]["promoted"], stack.summary["rollout"]
    (replayed, *_) = artifacts(stack.api_url, "replay")  # the first train had no production to replay
    text = replayed["data"]
    assert "## Replay of recorded requests" in text and "Skipped" not in text, text
    assert "disagreement" in text and "latency ratio (candidate / production)" in text, text
    print(text)


PAUSED = {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "flows": {"name": {"any_": ["train"]}}}


@dataclass
class Approvals:
    """The demo's project with a worker on its dev pool again, runs of retrain-dev made to ask a person."""

    stack: Stack
    deployment_id: str
    env: dict[str, str]

    def retrain(self, reason: str, **settings: str) -> str:
        """A run of retrain-dev in promotion.mode approve (its job variables, as prod's are), with no
        production model, so the candidate passes the gate on its own and the decision is the person's."""
        self.stack.project.query(CLEAR_PRODUCTION, PREFECT_API_URL=self.stack.api_url)
        prefix = self.stack.project.package.upper()
        env = {**self.env, f"{prefix}_PROMOTION__MODE": "approve"}
        env |= {f"{prefix}_PROMOTION__{k.upper()}": v for k, v in settings.items()}
        response = httpx.post(
            f"{self.stack.api_url}/deployments/{self.deployment_id}/create_flow_run",
            json={"parameters": {"reason": reason}, "job_variables": {"env": env}},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["id"]

    def paused_train(self, since: datetime, timeout: float = 300) -> dict:
        """The train run (retrain's subflow) paused for the answer, once it is."""
        deadline = time.monotonic() + timeout
        while True:
            response = httpx.post(f"{self.stack.api_url}/flow_runs/filter", json=PAUSED, timeout=30)
            response.raise_for_status()
            runs = [r for r in response.json() if datetime.fromisoformat(r["created"]) >= since]
            if runs:
                return runs[0]
            assert time.monotonic() < deadline, f"no train run paused within {timeout} s"
            time.sleep(1)

    def finished(self, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = httpx.get(f"{self.stack.api_url}/flow_runs/{run_id}", timeout=30).json()
            if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return run
            assert time.monotonic() < deadline, f"run {run['name']} still {run['state']['type']}"
            time.sleep(1)

    def production(self) -> str | None:
        return self.stack.project.query(PRODUCTION, PREFECT_API_URL=self.stack.api_url)

    def decision(self, train_run_id: str) -> str:
        (found, *_) = artifacts(self.stack.api_url, "promotion-decision", train_run_id)
        return found["data"]


CLEAR_PRODUCTION = with_library("""
settings = internal("config").get_settings()
aliases = internal("registry.aliases")
internal("storage").open_storage(settings).delete(aliases.key(settings))
print("null")
""")
PRODUCTION = with_library("""
import json
settings = internal("config").get_settings()
print(json.dumps(internal("registry.aliases").read(settings).production))
""")


@pytest.fixture(scope="module")
def approvals(stack, tmp_path_factory) -> Iterator[Approvals]:
    """A process worker on the dev pool (the demo's stopped with it), the storm's waiting retrain run
    cancelled (its concurrency slot would cancel ours), and the job environment of retrain-dev."""
    api_url = stack.api_url
    deployment = httpx.get(f"{api_url}/deployments/name/retrain/retrain-dev", timeout=30).json()
    waiting = httpx.post(
        f"{api_url}/flow_runs/filter",
        json={
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING"]}}},
        },
        timeout=30,
    ).json()
    for run in waiting:
        httpx.post(
            f"{api_url}/flow_runs/{run['id']}/set_state",
            json={"state": {"type": "CANCELLED", "message": "not this test's"}, "force": True},
            timeout=30,
        ).raise_for_status()
    prefix = stack.project.package.upper()
    env = dict(deployment["job_variables"]["env"])
    # The demo's labelled traffic, and few trials: the three runs train on the same rows, one study.
    env[f"{prefix}_MONITORING__LABELS_PATH"] = str(stack.project.root / ".state" / "demo" / "labels.csv")
    env[f"{prefix}_TUNING__N_TRIALS"] = "3"
    port = free_port()
    worker_env = {
        **stack.project.env,
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(port),
    }
    pool = deployment["work_pool_name"]
    command = ["uv", "run", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    log = tmp_path_factory.mktemp("approvals") / "worker.log"
    with started(
        [*command, "--with-healthcheck"],
        cwd=stack.project.root,
        env=worker_env,
        log=log,
        ready_url=f"http://127.0.0.1:{port}/health",
    ):
        yield Approvals(stack, deployment["id"], env)


def test_a_retrain_in_approve_mode_waits_and_a_rejection_is_recorded_with_its_reason(approvals):
    since = datetime.now(UTC)
    retrain = approvals.retrain("approval test: reject")
    paused = approvals.paused_train(since)
    assert paused["state"]["name"] == "Paused"
    # The form's description, as the UI shows it above the fields: the gate's evidence.
    keyset = paused["state"]["state_details"]["run_input_keyset"]
    shown = httpx.get(
        f"{approvals.stack.api_url}/flow_runs/{paused['id']}/input/{keyset['description']}", timeout=30
    )
    assert "APPROVE OR REJECT" in shown.text and "no production model yet" in shown.text, shown.text
    # What the person sees: the run Paused in the Prefect UI, and the gate's verdict waiting for them.
    require_tool("chromium")
    seen = capture_prefect_ui(
        approvals.stack.api_url.removesuffix("/api"),
        flow_run_name_contains=paused["name"],
        artifact_key="promotion-gate",
        screenshot=OUTPUT / "approval-paused.png",
    )
    assert seen["flow_run"]["state"] == "Paused", seen["flow_run"]
    assert "WAITING FOR APPROVAL" in seen["artifact"]["text"], seen["artifact"]["text"][:500]
    # A person's click: Resume with the form's fields, through Prefect's API as the UI sends it.
    resumed = httpx.post(
        f"{approvals.stack.api_url}/flow_runs/{paused['id']}/resume",
        json={"run_input": {"approve": False, "reason": "the holdout is too small"}},
        timeout=30,
    )
    assert resumed.json()["status"] == "ACCEPT", resumed.text
    assert approvals.finished(retrain)["state"]["type"] == "COMPLETED"
    assert approvals.production() is None
    assert "rejected by a person: the holdout is too small" in approvals.decision(paused["id"])


def test_no_answer_within_the_approval_timeout_rejects(approvals):
    since = datetime.now(UTC)
    retrain = approvals.retrain("approval test: timeout", approval_timeout="10")
    paused = approvals.paused_train(since)
    approvals.finished(retrain)
    assert approvals.production() is None
    assert "no answer within promotion.approval_timeout (10 s)" in approvals.decision(paused["id"])
    # Prefect fails a run whose pause timed out ("never resumed"); the rejection was recorded before.
    assert approvals.finished(paused["id"])["state"]["type"] == "FAILED"


def test_an_approval_in_the_prefect_ui_promotes_the_model(approvals):
    since = datetime.now(UTC)
    retrain = approvals.retrain("approval test: approve")
    paused = approvals.paused_train(since)
    assert approvals.production() is None  # waiting: nothing promoted yet
    resumed = httpx.post(
        f"{approvals.stack.api_url}/flow_runs/{paused['id']}/resume",
        json={"run_input": {"approve": True, "reason": "checked the card"}},
        timeout=30,
    )
    assert resumed.json()["status"] == "ACCEPT", resumed.text
    finished = approvals.finished(retrain)
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    tag = approvals.production()
    assert tag is not None
    assert "approved by a person: checked the card" in approvals.decision(paused["id"])
