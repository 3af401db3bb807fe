"""Webhook alerts: one message when the monitor's verdict finds drift or performance below its threshold, and
one when the watch after rollout rolls a model back (or fails to).

The webhook URL is a secret (a Slack incoming-webhook URL embeds its token in the path), so it is read at
send time from a Prefect Secret block or an environment variable and never leaves this module: not in task
parameters, return values, exceptions or logs. Sending is a Prefect task so Prefect's own retries cover a
flaky receiver; a receiver that stays down costs a warning, never the monitor run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import httpx
from prefect import get_run_logger, task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from ..config import Settings, get_settings

if TYPE_CHECKING:
    from .drift import ColumnDrift
    from .verdict import Performance, Rollout, Verdict

# Drifted columns named in the message; the rest are counted ("and 12 more").
TOP_COLUMNS = 5
# Characters of a failing receiver's answer kept in the error, enough for Slack's "invalid_token" and kin.
ANSWER_CHARS = 200
# The verdict's fields (keys of Verdict.as_dict) that the "json" format forwards besides the text.
JSON_FIELDS = (
    "model_version",
    "source",
    "n_current",
    "drift_share",
    "drifted",
    "threshold",
    "drifted_columns",
    "prediction_drift",
    "performance",
    "report",
    "report_url",
    "event_emitted",
)


class AlertConfigError(RuntimeError):
    """The alert settings point at a webhook that cannot be read; a mistake to fix, not to retry."""


class AlertSendError(RuntimeError):
    """The receiver could not be reached or refused the message; its text never holds the URL's secret."""


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow or task run's logger inside a run (so the lines show in the Prefect UI), else the module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


# --- where the URL comes from -------------------------------------------------------------------------


def webhook_url(settings: Settings) -> str | None:
    """The webhook URL from the Secret block named in alerts.webhook_block, else from the environment
    variable named in alerts.webhook_env; None when neither is configured (alerts are off)."""
    alerts = settings.alerts
    if alerts.webhook_block:
        return _checked(_from_block(alerts.webhook_block), f"Prefect Secret block {alerts.webhook_block!r}")
    if alerts.webhook_env and os.environ.get(alerts.webhook_env):
        return _checked(os.environ[alerts.webhook_env].strip(), f"environment variable {alerts.webhook_env}")
    return None


def _from_block(name: str) -> Any:
    try:
        # load() is typed block-or-coroutine (a coroutine inside an event loop); here it is the block.
        return cast("Secret[str]", Secret.load(name)).get()
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise AlertConfigError(
            f"alerts.webhook_block is {name!r} but there is no Prefect Secret block of that name on this "
            f"Prefect server. Create it with `prefect block create secret` (name {name!r}) or in Python: "
            f'`Secret(value=url).save({name!r})`; or set alerts.webhook_block to "" to read the URL from '
            "the environment variable named in alerts.webhook_env."
        ) from exc


def _checked(value: Any, origin: str) -> str:
    """The value as a URL; the error names where it came from and never repeats the value itself."""
    if not isinstance(value, str) or urlsplit(value.strip()).scheme not in ("http", "https"):
        raise AlertConfigError(f"the alert webhook in {origin} is not an http(s) URL")
    return value.strip()


def redacted(url: str) -> str:
    """What may be said about a webhook URL in logs and errors: scheme and host, never the path or query
    that carry the token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/…"


def _scrub(text: str, url: str) -> str:
    """`text` with the URL, and its path and query on their own, replaced by the redacted form."""
    parts = urlsplit(url)
    for secret in (url, url.rstrip("/"), parts.path + (f"?{parts.query}" if parts.query else ""), parts.path):
        if len(secret) > 1:  # a bare "/" path is no secret, and replacing it would mangle the text
            text = text.replace(secret, redacted(url))
    return text


# --- what is said -------------------------------------------------------------------------------------


def alert_kind(verdict: Verdict) -> str:
    """Why the verdict deserves an alert: "drift", "performance", "drift_and_performance", or "none"."""
    drift, performance = verdict.drifted, verdict.performance_below
    if drift and performance:
        return "drift_and_performance"
    return "drift" if drift else "performance" if performance else "none"


def alert_text(verdict: Verdict, project_name: str) -> str:
    """One plain-text message, readable in Slack, Mattermost, Teams and e-mail alike (no markup)."""
    kind = alert_kind(verdict)
    headline = {
        "drift": "data drift detected",
        "performance": "model performance below threshold",
        "drift_and_performance": "data drift and model performance below threshold",
        "none": "monitor check passed",
    }[kind]
    lines = [f"[{project_name}] {headline} for model {verdict.model_version}"]
    lines.append(_drift_line(verdict))
    lines += _prediction_drift_lines(verdict.prediction_drift)
    lines += _performance_lines(verdict.performance)
    source = verdict.source
    lines.append(f"Rows checked: {verdict.n_current:,}" + (f" ({source})" if source else ""))
    if verdict.report_url:
        lines.append(f"Report: {verdict.report_url}")
    elif verdict.report:
        lines.append(f"Report file on the monitor's host: {verdict.report}")
    if kind != "none":
        lines.append(_retraining_line(verdict))
    return "\n".join(lines)


def _drift_line(verdict: Verdict) -> str:
    share, threshold = float(verdict.drift_share), verdict.threshold
    line = f"Drift share: {share:.0%} of columns drifted"
    if threshold is not None:
        line += f" (threshold {float(threshold):.0%})"
    drifted = verdict.drifted_columns
    if drifted:
        details = {c.column: c for c in verdict.columns}
        named = [_column(name, details.get(name)) for name in drifted[:TOP_COLUMNS]]
        more = f", and {len(drifted) - TOP_COLUMNS} more" if len(drifted) > TOP_COLUMNS else ""
        line += ": " + ", ".join(named) + more
    return line


def _column(name: str, detail: ColumnDrift | None) -> str:
    if detail is None or detail.score is None:
        return str(name)
    return f"{name} ({detail.method} {detail.score:.3g}, threshold {detail.threshold})"


def _prediction_drift_lines(prediction: ColumnDrift | None) -> list[str]:
    if prediction is None:
        return []
    state = "drifted" if prediction.drifted else "stable"
    return [
        f"Prediction drift: {state} ({prediction.method} {prediction.score:.3g}, "
        f"threshold {prediction.threshold})"
    ]


def _performance_lines(performance: Performance | None) -> list[str]:
    if performance is None or performance.value is None:
        return []
    line = f"Performance: {performance.metric} {performance.value:.3f}"
    line += f" on {performance.n_labelled:,} labelled rows"
    if performance.threshold:
        # "below" means worse: for an error metric such as RMSE that is a value above the threshold
        verdict = "worse than" if performance.below_threshold else "within"
        line += f", {verdict} the threshold {performance.threshold}"
    return [line]


def _retraining_line(verdict: Verdict) -> str:
    if verdict.event_emitted:
        return "Retraining has been requested (the retrain deployment reacts to the monitor's event)."
    return "Retraining was NOT requested: the monitor's event could not be emitted; see the flow run."


def rollback_text(rollout: Rollout, project_name: str, package: str) -> str:
    """The message of an automatic rollback (or of one that failed)."""
    if rollout.state == "rolled back":
        return (
            f"[{project_name}] model {rollout.retired} rolled back automatically: production is "
            f"{rollout.restored} again\nReason: {rollout.reason}\nThe rolled-back model is not promoted "
            f"again on its own; `python -m {package} promote --tag {rollout.retired} --allow-rolled-back` "
            "does."
        )
    return (
        f"[{project_name}] model {rollout.live} should be rolled back (previous model {rollout.previous}) "
        f"but the rollback failed: {rollout.rollback_error}\nReason: {rollout.reason}"
    )


def verdict_details(verdict: Verdict) -> dict[str, Any]:
    """What the "json" format forwards besides the text: the kind of alert and the verdict's main fields."""
    found = verdict.as_dict()
    return {"kind": alert_kind(verdict), **{key: found[key] for key in JSON_FIELDS}}


def alert_body(text: str, details: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The JSON the webhook receives: Slack-style `{"text": ...}`, or for "json" the text plus `details`
    (the kind and the verdict's main fields) so a receiver of your own can route and chart alerts without
    parsing prose."""
    if fmt == "slack":
        return {"text": text}
    if fmt != "json":
        raise AlertConfigError(f"alerts.format is {fmt!r}; expected 'slack' or 'json'")
    project = get_settings().project.name
    return _jsonable({"text": text, "project": project, **details})


def _jsonable(value: Any) -> Any:
    """The value as plain JSON types: numpy scalars become numbers, anything else unknown a string."""

    def fallback(item: Any) -> Any:
        return item.item() if hasattr(item, "item") else str(item)

    return json.loads(json.dumps(value, default=fallback))


# --- sending ------------------------------------------------------------------------------------------


@task(name="send-alert", cache_policy=NO_CACHE)
def send_alert(text: str, details: dict[str, Any]) -> bool:
    """POST the alert; any failure raises so Prefect retries the task.

    The URL is resolved here, inside the task, instead of being passed in: task parameters can end up in
    logs and the Prefect UI, and a retry then also picks up a Secret block fixed in the meantime."""
    settings = get_settings()
    url = webhook_url(settings)
    if url is None:
        raise AlertConfigError("no alert webhook configured (alerts.webhook_block or alerts.webhook_env)")
    body = alert_body(text, details, settings.alerts.format)
    _post(url, body, settings.alerts.timeout_seconds)
    _logger().info("Alert sent to %s", redacted(url))
    return True


def _post(url: str, body: dict[str, Any], timeout: float) -> None:
    """POST `body`; raise AlertSendError, with the URL's secret scrubbed, unless the receiver says 2xx."""
    failure: str | None = None
    with _httpx_logs_redacted(url):
        try:
            response = httpx.post(url, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            # httpx's messages and exception objects can carry the URL: keep only a scrubbed message, and
            # raise outside this block so the original is not even chained as the new error's context.
            failure = f"could not reach the alert webhook at {redacted(url)}: {type(exc).__name__}: {exc}"
        else:
            if not response.is_success:
                answer = response.text[:ANSWER_CHARS].strip()
                failure = f"the alert webhook at {redacted(url)} answered {response.status_code}: {answer}"
    if failure is not None:
        raise AlertSendError(_scrub(failure, url))


class _RedactUrl(logging.Filter):
    """Rewrites httpx's "HTTP Request: POST <url> ..." lines, which would print the webhook's token to any
    log that runs at INFO level."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_scrub(str(a), self.url) if self.url in str(a) else a for a in record.args)
        record.msg = _scrub(str(record.msg), self.url)
        return True


@contextmanager
def _httpx_logs_redacted(url: str) -> Iterator[None]:
    # Installed only around our own request: other httpx traffic (Prefect's client) passes untouched.
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    redactor = _RedactUrl(url)
    for logger in loggers:
        logger.addFilter(redactor)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(redactor)


def notify(verdict: Verdict, settings: Settings | None = None) -> bool:
    """Send the alert for a drifted or under-performing verdict, with Prefect retries; True when sent.

    False when there is nothing to alert, no webhook is configured, or the receiver still fails after the
    retries: an alert that cannot be delivered is logged as a warning and never fails the monitor run. A
    webhook_block naming a missing Secret block raises AlertConfigError, a setup mistake to fix at once."""
    settings = settings or get_settings()
    logger = _logger()
    url = webhook_url(settings)  # read even without drift, so a misconfigured block shows up on every run
    if url is None:
        logger.info("no alert webhook configured (alerts.webhook_block or alerts.webhook_env); no alert sent")
        return False
    if alert_kind(verdict) == "none":
        logger.debug("nothing to alert: no drift and performance within its threshold")
        return False
    text = alert_text(verdict, settings.project.name)
    try:
        return _sender(settings)(text, verdict_details(verdict))
    except Exception as exc:  # best effort: whatever stops the alert, the monitor's verdict must stand
        logger.warning(
            "Alert not delivered (%d attempts allowed): %s. The monitor's verdict and event stand; check the "
            "receiver and the webhook in alerts.webhook_block / the %s environment variable.",
            settings.alerts.retries + 1,
            _scrub(f"{type(exc).__name__}: {exc}", url),
            settings.alerts.webhook_env or "alerts.webhook_env",
        )
        return False


def notify_rollback(rollout: Rollout, settings: Settings) -> bool:
    """Send the alert of an automatic rollback (or of one that failed); True when sent. Never raises: the
    rollback stands whatever the alert runs into, a misconfigured webhook included (logged)."""
    try:
        if webhook_url(settings) is None:
            return False
        text = rollback_text(rollout, settings.project.name, settings.project.package)
        return _sender(settings)(text, {"kind": "none", "model_version": rollout.retired or rollout.live})
    except Exception as exc:  # an alert that cannot go out is a warning, as for drift alerts
        _logger().warning("Rollback alert not delivered: %s: %s", type(exc).__name__, exc)
        return False


def _sender(settings: Settings) -> Any:
    """send_alert with the retries the settings ask for."""
    return send_alert.with_options(
        retries=settings.alerts.retries, retry_delay_seconds=settings.alerts.retry_delay_seconds
    )
