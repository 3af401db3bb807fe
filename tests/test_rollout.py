"""Rollout and the watch after it, on one installed default project under steady traffic.

The story: `train` promotes a good model and the service serves it while a thread sends a constant stream
of /predict_one requests. A deliberately worse model (the production pipeline refitted on inverted labels,
saved with the project's own store.save) is forced past the gate by writing the alias record, as a faulty
promotion would. The running service must switch to it with no failed request. Labels for the served
requests come back (the worse model gets them wrong), and the monitor flow, against a real Prefect server
and a webhook receiver, must roll back on its own: the alias record, the `<package>.model.rolled_back`
event read back from the server's REST API, the webhook message, and the service switching back, again
with no failed request.
"""

from __future__ import annotations

import contextlib
import csv
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from conftest import Project, copy_project, prefect_server, serving
from test_monitoring_e2e import Receiver, webhook_receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MIN_ROWS = 20  # rollout.min_rows: enough for the story, small enough to keep it short
SWITCH_SECONDS = 30  # the longest a promotion or a rollback may take to reach the running service
PAUSE = 0.02  # between two requests of the load: steady traffic, not a benchmark


@dataclass
class Answer:
    at: float  # time.time() when the answer came
    status: int
    model_version: str | None
    request_id: str | None
    row: int


@dataclass
class Load:
    """A thread that sends one /predict_one request after another and keeps every answer."""

    url: str
    rows: list[dict]
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            index = 0
            while not self.stop.is_set():
                row = index % len(self.rows)
                try:
                    response = client.post(f"{self.url}/predict_one", json={"row": self.rows[row]["row"]})
                    body = response.json() if response.is_success else {}
                    status = response.status_code
                except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                    body, status = {"error": str(exc)}, 0
                self.answers.append(
                    Answer(time.time(), status, body.get("model_version"), body.get("request_id"), row)
                )
                index += 1
                time.sleep(PAUSE)

    def wait_for(self, version: str, since: float, timeout: float) -> float | None:
        """Seconds from `since` (a time.time()) to the first answer from `version` after it (None: none
        within `timeout` seconds from now)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = [a for a in list(self.answers) if a.at >= since and a.model_version == version]
            if seen:
                return seen[0].at - since
            time.sleep(0.2)
        return None

    def served_by(self, version: str) -> int:
        return sum(1 for a in list(self.answers) if a.model_version == version)


ROWS_SCRIPT = """
import json, sys
from my_pkg import dataset  # the project first: importing it binds the library
from ml_lifecycle import get_settings
from ml_lifecycle._internal.registry import aliases, store

settings = get_settings()
schema = store.load(aliases.production_tag(settings)).schema
frame = dataset.load_frame(settings)
target = settings.data.target_column
rows = [
    {"row": {c: (None if v != v else v) for c, v in record.items() if c in schema}, "target": record[target]}
    for record in frame.to_dict(orient="records")
]
print(json.dumps({"production": aliases.production_tag(settings), "target": target, "rows": rows}))
"""

# The production pipeline refitted on inverted labels: the same API, predictions the wrong way round.
WORSE_MODEL_SCRIPT = """
import json
from sklearn.base import clone
from my_pkg import dataset  # the project first: importing it binds the library
from ml_lifecycle import get_settings
from ml_lifecycle._internal.registry import aliases, store

settings = get_settings()
good = store.load(aliases.production_tag(settings))
frame = dataset.load_frame(settings)
features, labels = frame[list(good.schema)], frame[settings.data.target_column]
worse = clone(good.pipeline).fit(features, 1 - labels)
tag = store.save(
    settings, worse, schema=good.schema, reference=good.reference, metrics={}, params={},
    data_hash="inverted labels (tests/test_rollout.py)",
)
forced = aliases.entry(tag, "test: forced")
aliases.change(settings, lambda record: record.history.append(forced))
print(json.dumps({"good": good.tag, "worse": tag, "since": forced["since"]}))
"""

MONITOR_SCRIPT = """
import json
from my_pkg.flows import monitor

verdict = monitor()
print(json.dumps(verdict["rollout"], default=str))
"""

ALIASES_SCRIPT = """
import json
import my_pkg  # the project first: importing it binds the library
from ml_lifecycle import get_settings
from ml_lifecycle._internal.registry import aliases

print(json.dumps(aliases.read(get_settings()).as_json()))
"""


def timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def script(text: str, package: str) -> str:
    return text.replace("my_pkg", package)


def write_labels(path: Path, answers: list[Answer], rows: list[dict], target: str) -> int:
    """The labels that come back for the answered requests: request_id, row and the true target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled = [a for a in answers if a.status == 200 and a.request_id]
    with path.open("w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["request_id", "row", target])
        for answer in labelled:
            writer.writerow([answer.request_id, 0, rows[answer.row]["target"]])
    return len(labelled)


@dataclass
class Story:
    project: Project
    api_url: str
    good: str
    worse: str
    answers: list[Answer]
    to_worse_seconds: float | None  # from the alias change to the first answer of the worse model
    rollout: dict
    rolled_back_at: float  # when the watch changed the alias back (time.time())
    to_good_seconds: float | None
    alias_record: dict
    events: list[dict]
    receiver: Receiver


@pytest.fixture(scope="module")
def story(default_trained, tmp_path_factory, prefect_home) -> Iterator[Story]:
    home = tmp_path_factory.mktemp("rollout")
    labels = home / "labels.csv"
    project = copy_project(  # trained (3 trials): its production model is the good one
        default_trained,
        home,
        prefect_home,
        settings={"ROLLOUT__MIN_ROWS": str(MIN_ROWS), "MONITORING__LABELS_PATH": str(labels)},
    )
    package, prefix = project.package, project.package.upper()
    with contextlib.ExitStack() as stack:
        api_url = stack.enter_context(prefect_server(project, home)) + "/api"
        data = project.query(script(ROWS_SCRIPT, package))
        good, rows, target = data["production"], data["rows"], data["target"]
        base = stack.enter_context(serving(project, home / "serve.log"))
        load = Load(base, rows)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        stack.callback(thread.join, 60)
        stack.callback(load.stop.set)
        assert load.wait_for(good, 0, 60) is not None, f"no answer from {good}: {load.answers[-3:]}"

        forced = project.query(script(WORSE_MODEL_SCRIPT, package))
        worse = forced["worse"]
        assert forced["good"] == good
        to_worse = load.wait_for(worse, timestamp(forced["since"]), 2 * SWITCH_SECONDS)
        deadline = time.monotonic() + 120
        while load.served_by(worse) < 3 * MIN_ROWS and time.monotonic() < deadline:
            time.sleep(0.5)
        write_labels(labels, list(load.answers), rows, target)

        with webhook_receiver() as receiver:
            rollout = project.query(
                script(MONITOR_SCRIPT, package),
                PREFECT_API_URL=api_url,
                **{f"{prefix}_ROLLOUT__SERVICE_URL": base, f"{prefix}_ALERT_WEBHOOK_URL": receiver.url},
            )
        alias_record = project.query(script(ALIASES_SCRIPT, package))
        rolled_back = alias_record["rolled_back"]
        rolled_back_at = timestamp(rolled_back[-1]["since"]) if rolled_back else time.time()
        to_good = load.wait_for(good, rolled_back_at, 2 * SWITCH_SECONDS)
        after = len(load.answers)
        deadline = time.monotonic() + 60
        while len(load.answers) < after + 20 and time.monotonic() < deadline:  # traffic after the switch
            time.sleep(0.2)  # back, checked for failures too
        load.stop.set()
        thread.join(60)
        events = httpx.post(
            f"{api_url}/events/filter",
            json={"filter": {"event": {"name": [f"{package}.model.rolled_back"]}}, "limit": 50},
            timeout=30,
        )
        events.raise_for_status()
        print(  # shown with `pytest -rP`: the figures behind the assertions
            f"{len(load.answers)} answers ({load.served_by(worse)} by the worse model), switch to it after "
            f"{to_worse} s and back after {to_good} s; watch: {rollout.get('state')}: {rollout.get('reason')}"
        )
        yield Story(
            project=project,
            api_url=api_url,
            good=good,
            worse=worse,
            answers=list(load.answers),
            to_worse_seconds=to_worse,
            rollout=rollout,
            rolled_back_at=rolled_back_at,
            to_good_seconds=to_good,
            alias_record=alias_record,
            events=events.json()["events"],
            receiver=receiver,
        )


def failed(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if not 200 <= a.status < 300]


def test_a_forced_promotion_reaches_the_running_service_with_no_failed_request(story):
    during = [a for a in story.answers if a.at < story.rolled_back_at]
    assert story.to_worse_seconds is not None, f"the service never answered with {story.worse}"
    assert story.to_worse_seconds <= SWITCH_SECONDS, story.to_worse_seconds
    assert not failed(during), failed(during)[:5]
    versions = {a.model_version for a in during}
    assert versions == {story.good, story.worse}, versions


def test_the_watch_rolls_the_worse_model_back_naming_the_evidence(story):
    rollout = story.rollout
    assert rollout["state"] == "rolled back", rollout
    assert (rollout["retired"], rollout["restored"]) == (story.worse, story.good)
    assert rollout["reason"].startswith("automatic: roc_auc "), rollout["reason"]
    assert "for the previous model on the same " in rollout["reason"], rollout["reason"]
    assert "worse by more than rollout.max_metric_drop" in rollout["reason"], rollout["reason"]
    assert rollout["event_emitted"] is True and rollout["alerted"] is True, rollout
    judged = {e["name"]: e for e in rollout["evidence"]}
    assert judged["performance"]["state"] == "worse"
    # /metrics was read: the service's figures were judged (or waited for rows), not unavailable
    assert judged["5xx share"]["state"] in ("ok", "worse", "not enough evidence"), judged["5xx share"]
    assert judged["predictions"]["state"] == "reported"


def test_the_alias_record_is_back_on_the_good_model_and_remembers_the_rollback(story):
    history, rolled_back = story.alias_record["history"], story.alias_record["rolled_back"]
    assert history[-1]["tag"] == story.good
    assert story.worse not in [entry["tag"] for entry in history]
    assert [entry["tag"] for entry in rolled_back] == [story.worse]
    assert rolled_back[0]["reason"] == story.rollout["reason"]


def test_the_rolled_back_event_is_on_the_prefect_server(story):
    [event] = story.events
    assert event["resource"]["prefect.resource.id"] == f"{story.project.package}.model.{story.worse}"
    payload = event["payload"]
    assert (payload["retired"], payload["restored"]) == (story.worse, story.good)
    assert payload["reason"] == story.rollout["reason"]


def test_the_webhook_names_the_rollback(story):
    texts = [body["text"] for body in story.receiver.bodies if "rolled back" in body.get("text", "")]
    assert len(texts) == 1, [body.get("text") for body in story.receiver.bodies]
    assert story.worse in texts[0] and story.good in texts[0] and "roc_auc" in texts[0]
    assert "--allow-rolled-back" in texts[0]


def test_the_service_switches_back_under_load_with_no_failed_request(story):
    assert story.to_good_seconds is not None, f"the service never answered with {story.good} again"
    assert story.to_good_seconds <= SWITCH_SECONDS, story.to_good_seconds
    after = [a for a in story.answers if a.at >= story.rolled_back_at]
    assert not failed(after), failed(after)[:5]
    settled = [a for a in after if a.at >= story.rolled_back_at + story.to_good_seconds]
    assert settled and {a.model_version for a in settled} == {story.good}
