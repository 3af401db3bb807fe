"""Several machines on one: the loop closes when the machines share nothing but the storage URL and the
Prefect server (issue 20).

Four copies of one installed default project stand for four machines, each with its own working folder,
BentoML model store (`BENTOML_HOME`) and local disk: a train worker (a process work pool's worker, which
also trains the first model), two service replicas (`east` and `west`) and a monitor run. All of them point
`<PKG>_STORAGE__URL` at `s3://<bucket>/team` on moto's S3 server (the root conftest's s3_server) and
`PREFECT_API_URL` at one Prefect server; nothing else is shared.

The story: the worker trains and publishes the first model; both replicas import it from the store and
serve it; the changed world's rows go to both replicas, half each, and their labels to `labels/` in the
store; the monitor, on its own machine, reads the window across both replicas' request-log partitions,
finds drift and emits the event; the retrain deployment's trigger starts a run on the worker, which learns
from the labelled traffic and promotes; the promoted model reaches both replicas under steady traffic with
no failed request. Last, `kill -9` of the west replica, whose log flushes every FLUSH_RECORDS records only
(so no timed flush can blur the count): what it loses is what its pending-records metric said, less than
one flush, and the store holds what its written-records counter said.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import Project, copy_project, explain, prefect_server, serving, stop_group, with_library
from test_monitoring_e2e import flow_runs
from test_rollout import Answer, Load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REPLICAS = ("east", "west")
FLUSH_RECORDS = 25  # the west replica flushes its request log every 25 records, and on no timer
SWITCH_SECONDS = 60  # the longest a promotion may take to reach a running replica (alias polled every 1 s)
RETRAIN_SECONDS = 900  # from the drift event to the end of the retrain run, on a busy 2-core machine

STREAMS_SCRIPT = """
import json
from ml_lifecycle import get_settings
demo_traffic = internal("local.demo_traffic")
settings = get_settings()
_, changed, after = demo_traffic.demo_streams(settings)
print(json.dumps({
    "target": settings.data.target_column,
    "changed": demo_traffic.as_records(changed.features),
    "labels": changed.labels.tolist(),
    "after": demo_traffic.as_records(after.features),
}))
"""

DEPLOY_SCRIPT = """
import json, os
from ml_lifecycle import get_settings
demo, processes = internal("local.demo"), internal("local.processes")
settings = get_settings()
demo.deploy(settings, os.environ["PREFECT_API_URL"])
print(json.dumps({"pool": processes.work_pool(settings.root, demo.ENVIRONMENT)}))
"""

PRODUCTION_SCRIPT = """
import json
from ml_lifecycle import get_settings
print(json.dumps(internal("registry.aliases").production_tag(get_settings())))
"""

MONITOR_SCRIPT = """
import json, os
from datetime import datetime
flows = importlib.import_module(package + ".flows")
verdict = flows.monitor(start=datetime.fromisoformat(os.environ["SHARED_STORE_WINDOW_START"]))
print(json.dumps(verdict, default=str))
"""


@dataclass(frozen=True)
class Machines:
    """The four machines and what they share."""

    worker: Project
    replicas: dict[str, Project]
    monitor: Project
    url: str  # storage.url, the same on every machine
    api_url: str


@dataclass
class Story:
    machines: Machines
    first: str  # the model the worker trained and published first
    promoted: str  # the production model after the triggered retrain
    sent: dict[str, list[Answer]]  # the changed world's rows, per replica
    verdict: dict
    retrain: dict
    loads: dict[str, Load]  # steady traffic during the retrain and the switch, per replica
    # when each replica first answered with the promoted model (time.time()), None: never
    switched: dict[str, float | None]
    store_keys: list[str]
    kill: dict


def store_of(url: str, environ: dict[str, str]):
    """The shared store as this test process sees it (the library's Storage, pointed at moto)."""
    from ml_lifecycle._internal.storage import Storage

    with pytest.MonkeyPatch.context() as patch:
        for name, value in environ.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        return Storage(url)


def replica_records(store, replica: str) -> list[dict]:
    """Every request-log record the replica has written to the store (any hour, any worker, any flush)."""
    records = []
    for listed in store.list("requests"):
        if not Path(listed.key).name.startswith(f"{replica}-"):
            continue
        data = store.read_bytes(listed.key) or b""
        records += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return records


def metric(base: str, name: str) -> float:
    """The sum of one Prometheus metric's samples on a replica's /metrics (labels and workers summed)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}(?:_total)?(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", re.MULTILINE)
    values = [float(v) for v in pattern.findall(text)]
    assert values, f"{base}/metrics has no {name}:\n" + "\n".join(
        line for line in text.splitlines() if "request_log" in line
    )
    return sum(values)


def until(what: str, check, seconds: float, pause: float = 0.5):
    """Poll `check` until it returns something true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(pause)
    return found


def send_rows(bases: dict[str, str], rows: list[dict]) -> dict[str, list[Answer]]:
    """The rows as single-row requests, alternating between the replicas: half each, in order."""
    sent: dict[str, list[Answer]] = {name: [] for name in bases}
    names = list(bases)
    with httpx.Client(timeout=60) as client:
        for index, row in enumerate(rows):
            name = names[index % len(names)]
            response = client.post(f"{bases[name]}/predict_one", json={"row": row})
            body = response.json() if response.is_success else {}
            version, request_id = body.get("model_version"), body.get("request_id")
            sent[name].append(Answer(time.time(), response.status_code, version, request_id, index))
    return sent


def steer_pending(base: str, package: str, rows: list[dict], wanted, seconds: float = 60) -> list[Answer]:
    """`rows` (in turn, from the first) to the replica until its pending-records metric is
    `wanted`; while FLUSH_RECORDS or more are pending a flush is due, so it waits for it instead of sending.
    Between the last request and the return no flush is due: with no timer, the count stays as it is."""
    answers: list[Answer] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30) as client:
        while (
            not wanted(pending := metric(base, f"{package}_request_log_pending")) or pending >= FLUSH_RECORDS
        ):
            assert time.monotonic() < deadline, f"{base}: {pending} records pending after {seconds:g} s"
            if pending >= FLUSH_RECORDS:
                time.sleep(0.2)  # the writer's flush is due: poll until it is done
                continue
            index = len(answers) % len(rows)
            response = client.post(f"{base}/predict_one", json={"row": rows[index]})
            assert response.status_code == 200, response.text
            body = response.json()
            answers.append(Answer(time.time(), 200, body["model_version"], body["request_id"], index))
    return answers


def labels_csv(sent: dict[str, list[Answer]], labels: list, target: str) -> bytes:
    """What the user's system writes under labels/ once the truth is known: request id, row, target."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["request_id", "row", target])
    for answers in sent.values():
        for answer in answers:
            writer.writerow([answer.request_id, 0, labels[answer.row]])
    return buffer.getvalue().encode()


@contextlib.contextmanager
def prefect_worker(machine: Project, pool: str, api_url: str, log: Path) -> Iterator[subprocess.Popen]:
    """`prefect worker start` on the worker machine; its flow runs inherit its environment (its store)."""
    env = {**machine.env, "PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    command = ["uv", "run", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=machine.root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_group(process)  # before the server: a worker whose server is gone ignores SIGTERM for a while


def retrain_run(api_url: str, since: datetime) -> dict | None:
    """The triggered retrain run once it has ended (None while there is none, or it is still going)."""
    runs = flow_runs(api_url, "retrain-dev", since)
    ended = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
    return ended[0] if ended else None


@pytest.fixture(scope="module")
def machines(default_installed, s3_server, tmp_path_factory, prefect_home) -> Iterator[Machines]:
    home = tmp_path_factory.mktemp("shared-store")
    url = f"s3://{s3_server.bucket('shared-store')}/team"
    shared = {"STORAGE__URL": url, "ROLLOUT__POLL_SECONDS": "1", "SERVING__WORKERS": "1"}
    flush = {"east": ("1", "1000"), "west": ("3600", str(FLUSH_RECORDS))}  # seconds, records

    def machine(name: str, **settings: str) -> Project:
        copied = copy_project(default_installed, home / name, prefect_home, settings={**shared, **settings})
        return Project(copied.root, copied.package, {**copied.env, **s3_server.environ})

    worker = machine("worker")
    replicas = {
        name: machine(
            name,
            SERVING__REPLICA=name,
            SERVING__REQUEST_LOG_FLUSH_SECONDS=flush[name][0],
            SERVING__REQUEST_LOG_FLUSH_RECORDS=flush[name][1],
        )
        for name in REPLICAS
    }
    monitor = machine("monitor")
    with prefect_server(worker, home) as ui_url:
        api_url = f"{ui_url}/api"
        yield Machines(worker, replicas, monitor, url, api_url)


@pytest.fixture(scope="module")
def story(machines, s3_server, tmp_path_factory) -> Iterator[Story]:
    logs = tmp_path_factory.mktemp("shared-store-logs")
    api = {"PREFECT_API_URL": machines.api_url}
    store = store_of(machines.url, s3_server.environ)
    worker, monitor = machines.worker, machines.monitor

    trained = worker.cli("train", "--n-trials", "3", **api)
    assert trained.returncode == 0, explain(trained)
    first = monitor.query(with_library(PRODUCTION_SCRIPT))  # read on another machine: from the store
    streams = monitor.query(with_library(STREAMS_SCRIPT))
    deployed = worker.query(with_library(DEPLOY_SCRIPT), **api)

    with contextlib.ExitStack() as stack:
        stack.enter_context(prefect_worker(worker, deployed["pool"], machines.api_url, logs / "worker.log"))
        bases = {
            name: stack.enter_context(serving(replica, logs / f"{name}.log", **api))
            for name, replica in machines.replicas.items()
        }
        since = datetime.now(UTC)
        sent = send_rows(bases, streams["changed"])
        sent["west"] += steer_pending(  # until west flushed the last of them: it flushes on no timer
            bases["west"], worker.package, streams["changed"], lambda pending: pending == 0
        )
        store.write("labels/shared-store-test.csv", labels_csv(sent, streams["labels"], streams["target"]))
        answered = {name: sum(a.status == 200 for a in answers) for name, answers in sent.items()}
        until(  # east flushes every second, west flushed above
            "both replicas' rows of the changed world are in the store",
            lambda: all(len(replica_records(store, name)) >= answered[name] for name in REPLICAS),
            60,
        )
        verdict = monitor.query(
            with_library(MONITOR_SCRIPT), SHARED_STORE_WINDOW_START=since.isoformat(), **api
        )

        loads = {name: Load(base, [{"row": row} for row in streams["after"]]) for name, base in bases.items()}
        threads = [threading.Thread(target=load.run, daemon=True) for load in loads.values()]
        for thread in threads:
            thread.start()
        try:
            retrain = until("the triggered retrain run ended", lambda: retrain_run(machines.api_url, since),
                            RETRAIN_SECONDS, pause=2)  # fmt: skip
            promoted = monitor.query(with_library(PRODUCTION_SCRIPT))
            switched = {name: load.wait_for(promoted, 0, SWITCH_SECONDS) for name, load in loads.items()}
            after = {name: len(load.answers) for name, load in loads.items()}
            until(  # traffic after the switch, checked for failures too
                "more answers after the switch",
                lambda: all(len(loads[n].answers) >= after[n] + 20 for n in loads),
                60,
            )
        finally:
            for load in loads.values():
                load.stop.set()
            for thread in threads:
                thread.join(60)

        west = [*sent["west"], *loads["west"].answers]
        kill = kill_west(store, bases["west"], west, streams["after"][0], machines.replicas["west"])
        print(  # shown with `pytest -rP`: the figures behind the assertions
            f"sent {', '.join(f'{n} {len(a)}' for n, a in sent.items())}; "
            f"window {verdict['n_current']} rows, drift share {verdict['drift_share']}; "
            f"retrain {retrain['state_type']} in {retrain.get('total_run_time')} s; {first} -> {promoted}; "
            "steady answers "
            f"{', '.join(f'{n} {len(load.answers)}' for n, load in loads.items())}; kill -9 of west: {kill}"
        )
        yield Story(
            machines=machines,
            first=first,
            promoted=promoted,
            sent=sent,
            verdict=verdict,
            retrain=retrain,
            loads=loads,
            switched=switched,
            store_keys=[listed.key for listed in store.list("models")]
            + [listed.key for listed in store.list("aliases")],
            kill=kill,
        )


def kill_west(store, base: str, answers: list[Answer], row: dict, machine: Project) -> dict:
    """kill -9 of the west replica with records pending: its metrics scraped first, its records in the
    store counted after. West flushes on FLUSH_RECORDS records only and gets no traffic between the scrape
    and the kill, so what it loses is exactly what was pending."""
    package = machine.package
    served = sum(a.status == 200 for a in answers)
    served += len(steer_pending(base, package, [row], lambda pending: pending > 0))
    pending = metric(base, f"{package}_request_log_pending")
    written = metric(base, f"{package}_request_log_written")
    dropped = metric(base, f"{package}_request_log_dropped")
    for pid in replica_pids(machine.root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    until("the west replica is gone", lambda: not replica_pids(machine.root), 30)
    stored = len(replica_records(store, "west"))
    return {
        "served": served,
        "pending": pending,
        "written": written,
        "dropped": dropped,
        "stored": stored,
        "lost": served - stored,
    }


def replica_pids(root: Path) -> list[int]:
    """The processes of a replica (uv, its CLI, BentoML's server and workers, some in sessions of their
    own): their command line or working folder names the replica's folder, which no other machine uses."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            if str(root) in cmdline or cwd.startswith(str(root)):
                found.append(int(entry.name))
    return found


def test_the_first_model_reaches_the_store_and_the_other_machines(story):
    assert any(key.startswith("models/") and key.endswith(".bentomodel") for key in story.store_keys), (
        story.store_keys
    )
    assert any(key.startswith("aliases/") for key in story.store_keys), story.store_keys
    for name, answers in story.sent.items():
        assert answers and {a.model_version for a in answers} == {story.first}, (name, answers[:3])


def test_the_monitor_reads_both_replicas_traffic_and_asks_for_a_retrain(story):
    for name, answers in story.sent.items():
        assert all(a.status == 200 for a in answers), (name, [a for a in answers if a.status != 200][:3])
    sent = sum(len(answers) for answers in story.sent.values())
    assert story.verdict["n_current"] == sent, story.verdict  # neither replica alone has them all
    assert story.verdict["event_emitted"] is True, story.verdict
    # the labels the user's system wrote under labels/ in the store, joined on both replicas' rows
    assert (story.verdict["performance"] or {}).get("n_labelled") == sent, story.verdict["performance"]


def test_the_drift_event_retrains_on_the_worker_and_promotes(story):
    assert story.retrain["state_type"] == "COMPLETED", story.retrain
    assert story.retrain["created_by"]["type"] == "AUTOMATION", story.retrain
    assert story.promoted != story.first


def test_the_promoted_model_reaches_both_replicas_with_no_failed_request(story):
    for name, load in story.loads.items():
        assert story.switched[name] is not None, f"{name} never answered with {story.promoted}"
        failed = [a for a in load.answers if a.status != 200]
        assert not failed, (name, failed[:5])
        assert load.served_by(story.promoted) > 0, name


def test_kill_minus_nine_loses_at_most_one_flush_and_the_metrics_say_how_many(story):
    kill = story.kill
    assert kill["dropped"] == 0, kill
    assert kill["stored"] == kill["written"], kill  # the written counter is what the store holds
    assert kill["lost"] == kill["pending"], kill  # what was pending at the kill is what is lost
    assert 0 < kill["pending"] < FLUSH_RECORDS, kill  # less than one flush
