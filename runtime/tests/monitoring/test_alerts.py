"""Webhook alerts, sent to real HTTP receivers on loopback: what a team sees in its channel when the
monitor finds drift, and what it never sees (the webhook's secret)."""

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from ml_lifecycle._internal.config import ENV_PREFIX, get_settings
from ml_lifecycle._internal.monitoring.alerts import (
    AlertConfigError,
    alert_body,
    alert_kind,
    alert_text,
    notify,
    notify_rollback,
    rollback_text,
    verdict_details,
    webhook_url,
)
from ml_lifecycle._internal.monitoring.verdict import Rollout, Verdict
from prefect import flow
from prefect.blocks.system import Secret

from . import verdicts

# The part of a Slack webhook URL that is the credential; it must never show up anywhere but the request.
SECRET = "s3cr3tT0kenXYZ"
SECRET_PATH = f"/services/T0TEAM/B0HOOK/{SECRET}"

VERDICT = verdicts.drifted()
QUIET = verdicts.quiet()
# The verdicts monitor_like alerts on, by name: a flow's parameters go to the Prefect API as JSON.
SENT = {"drifted": VERDICT, "quiet": QUIET}


class Receiver:
    """A webhook receiver on 127.0.0.1 that records each POST and answers with the given statuses in turn
    (the last one repeats). A failing answer echoes the request path, as many web servers' error pages do."""

    def __init__(self, statuses: tuple[int, ...] = (200,)):
        self.statuses = list(statuses)
        self.posts: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                answer = b"ok" if status < 300 else f"no webhook at {self.path}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"


@pytest.fixture
def receiver():
    started = []

    def start(*statuses: int) -> Receiver:
        started.append(Receiver(statuses or (200,)))
        return started[-1]

    yield start
    for one in started:
        one.server.shutdown()
        one.server.server_close()


@pytest.fixture
def configure(monkeypatch):
    """Alert settings as a user writes them: the URL in the environment variable named by
    alerts.webhook_env, other values as <PACKAGE>_ALERTS__<KEY> overrides. Retries
    without delay keep the tests fast."""

    def apply(url: str | None = None, **alerts):
        get_settings.cache_clear()
        env = get_settings().alerts.webhook_env
        monkeypatch.delenv(env, raising=False)  # a developer's own webhook must never get test alerts
        if url is not None:
            monkeypatch.setenv(env, url)
        for key, value in {"retries": 2, "retry_delay_seconds": 0, **alerts}.items():
            monkeypatch.setenv(f"{ENV_PREFIX}ALERTS__{key.upper()}", str(value))
        get_settings.cache_clear()
        return get_settings()

    yield apply
    get_settings.cache_clear()


@flow(name="monitor-like")
def monitor_like(verdict: str = "drifted") -> bool:
    """Calls notify as the monitor flow does, with the settings of the moment."""
    return notify(SENT[verdict])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the message -------------------------------------------------------------------------------------


def test_the_message_says_what_drifted_how_the_model_does_and_what_happens_next():
    text = alert_text(VERDICT, "Churn Model")
    assert text.splitlines()[0] == (
        f"[Churn Model] data drift and model performance below threshold for model {VERDICT.model_version}"
    )
    assert "Drift share: 40% of columns drifted (threshold 30%): a (wasserstein 0.31" in text
    assert "b (jensenshannon 0.2" in text and "c (wasserstein" not in text
    assert "Prediction drift: drifted" in text
    assert "Performance: roc_auc 0.710 on 300 labelled rows, worse than the threshold 0.8" in text
    assert "Rows checked: 1,234 (requests window" in text
    assert "Report: http://reports.internal/drift-20261126T100000Z.html" in text
    assert "Retraining has been requested" in text


def test_a_verdict_without_details_still_makes_a_message():
    drift = verdicts.drift_result(0.5, columns=[], prediction=None, n_current=60, drifted=[])
    minimal = Verdict("m:1", "", 60, drift=drift, event_emitted=True)
    text = alert_text(minimal, "P")
    assert text.startswith("[P] data drift detected for model m:1")
    assert "Drift share: 50%" in text and "Rows checked: 60" in text
    assert alert_kind(minimal) == "drift"


def test_many_drifted_columns_are_shortened():
    names = [f"col{i}" for i in range(12)]
    many = verdicts.drifted(drift=verdicts.drift_result(columns=[], drifted=names))
    assert "col4, and 7 more" in alert_text(many, "P")


def test_performance_alone_is_its_own_kind_of_alert():
    verdict = verdicts.quiet(performance=verdicts.WORSE)
    assert alert_kind(verdict) == "performance"
    assert "model performance below threshold" in alert_text(verdict, "P").splitlines()[0]


def test_the_json_format_carries_the_fields_a_receiver_routes_on(settings):
    body = alert_body("the text", verdict_details(VERDICT), "json")
    assert body["text"] == "the text" and body["kind"] == "drift_and_performance"
    assert body["project"] == settings.project.name
    assert body["model_version"] == VERDICT.model_version and body["drifted_columns"] == ["a", "b"]
    assert body["performance"]["value"] == 0.71
    assert body["event_emitted"] is True and body["report_url"] == VERDICT.report_url
    assert json.loads(json.dumps(body)) == body
    assert alert_body("the text", verdict_details(VERDICT), "slack") == {"text": "the text"}


def test_a_quiet_verdict_is_no_alert_and_a_lost_event_is_said():
    assert alert_kind(QUIET) == "none" and alert_kind(verdicts.not_enough()) == "none"
    lost = alert_text(verdicts.drifted(event_emitted=False), "P")
    assert "Retraining was NOT requested" in lost


ROLLED_BACK = Rollout(
    "rolled back", "automatic: roc_auc worse", "p:new", "p:old", retired="p:new", restored="p:old"
)


def test_the_rollback_message_says_how_to_promote_the_model_again():
    text = rollback_text(ROLLED_BACK, "P", "my_pkg")
    assert text.startswith("[P] model p:new rolled back automatically: production is p:old again")
    assert "Reason: automatic: roc_auc worse" in text
    assert "`python -m my_pkg promote --tag p:new --allow-rolled-back`" in text
    failed = Rollout("rollback failed", "automatic: x", "p:new", "p:old", rollback_error="LookupError: gone")
    assert "should be rolled back (previous model p:old) but the rollback failed: LookupError: gone" in (
        rollback_text(failed, "P", "my_pkg")
    )


# --- where the URL comes from ------------------------------------------------------------------------


def test_without_a_webhook_no_alert_is_sent(configure, caplog):
    settings = configure()
    caplog.set_level(logging.INFO)
    assert webhook_url(settings) is None
    assert notify(VERDICT, settings) is False
    assert "no alert webhook configured" in caplog.text


def test_a_webhook_that_is_no_url_is_refused_without_repeating_it(configure):
    settings = configure(url=f"hooks.example.com{SECRET_PATH}")
    with pytest.raises(
        AlertConfigError, match=f"environment variable {settings.alerts.webhook_env}"
    ) as caught:
        webhook_url(settings)
    assert SECRET not in str(caught.value)


# --- sending, against a real Prefect test server -----------------------------------------------------


@pytest.mark.usefixtures("prefect_server")
def test_slack_receiver_gets_the_text(configure, receiver):
    hook = receiver()
    settings = configure(url=hook.url)
    assert monitor_like() is True
    (post,) = hook.posts
    assert post["path"] == SECRET_PATH
    assert post["headers"]["Content-Type"] == "application/json"
    assert post["body"] == {"text": alert_text(VERDICT, settings.project.name)}


@pytest.mark.usefixtures("prefect_server")
def test_a_rollback_alert_reaches_the_receiver_and_a_missing_block_is_only_a_warning(
    configure, receiver, caplog
):
    hook = receiver()
    settings = configure(url=hook.url, format="json")
    assert notify_rollback(ROLLED_BACK, settings) is True
    body = hook.posts[0]["body"]
    assert body["kind"] == "none" and body["model_version"] == "p:new"
    assert body["text"] == rollback_text(ROLLED_BACK, settings.project.name, settings.project.package)
    broken = configure(webhook_block="no-such-webhook")
    assert notify_rollback(ROLLED_BACK, broken) is False  # the rollback stands
    assert "Rollback alert not delivered: AlertConfigError" in caplog.text


@pytest.mark.usefixtures("prefect_server")
def test_json_receiver_gets_the_text_and_the_verdict(configure, receiver):
    hook = receiver()
    settings = configure(url=hook.url, format="json")
    assert monitor_like() is True
    body = hook.posts[0]["body"]
    assert body["kind"] == "drift_and_performance" and body["drift_share"] == 0.4
    assert body["text"].startswith(f"[{settings.project.name}]")


@pytest.mark.usefixtures("prefect_server")
def test_a_flaky_receiver_is_retried_until_it_answers(configure, receiver):
    hook = receiver(500, 500, 200)
    configure(url=hook.url, retries=2)
    assert monitor_like() is True
    assert len(hook.posts) == 3


@pytest.mark.usefixtures("prefect_server")
def test_a_passing_check_sends_nothing(configure, receiver):
    hook = receiver()
    configure(url=hook.url)
    assert monitor_like("quiet") is False
    assert hook.posts == []


@pytest.fixture(params=["answers 500", "is not listening"])
def broken_webhook(request, receiver):
    if request.param == "answers 500":
        hook = receiver(500)
        return hook.url, hook
    return f"http://127.0.0.1:{free_port()}{SECRET_PATH}", None


@pytest.mark.usefixtures("prefect_server")
def test_a_receiver_that_stays_down_costs_a_warning_never_the_run_nor_the_secret(
    configure, broken_webhook, caplog, capfd
):
    url, hook = broken_webhook
    configure(url=url, retries=2)
    caplog.set_level(logging.DEBUG)  # every library's log lines, httpx's request lines included
    caplog.set_level(logging.DEBUG, logger="httpx")
    state = monitor_like(return_state=True)
    assert state.is_completed() and state.result() is False
    assert "Alert not delivered" in caplog.text and "http://127.0.0.1:" in caplog.text
    if hook is not None:
        assert len(hook.posts) == 3  # the first try and two retries
        assert "HTTP Request: POST http://127.0.0.1:" in caplog.text  # httpx's own line, redacted
    printed = capfd.readouterr()
    for text in (caplog.text, printed.out, printed.err, str(state.message)):
        assert SECRET not in text


@pytest.mark.usefixtures("prefect_server")
def test_the_url_can_live_in_a_prefect_secret_block(configure, receiver):
    hook = receiver()
    Secret(value=hook.url).save("test-alert-webhook", overwrite=True)
    settings = configure(webhook_block="test-alert-webhook")
    assert webhook_url(settings) == hook.url
    assert monitor_like() is True and len(hook.posts) == 1


@pytest.mark.usefixtures("prefect_server")
def test_a_missing_secret_block_says_how_to_create_it(configure):
    settings = configure(webhook_block="no-such-webhook")
    with pytest.raises(AlertConfigError, match="'no-such-webhook'.*prefect block create secret"):
        notify(VERDICT, settings)
