"""Monitoring flow: the traffic the service saw (or a file) against the production model's training reference.

Data drift per column and prediction drift (Evidently), a data-quality summary, and, when labels for the
window exist, the model's performance. When the share of drifted columns reaches the threshold it emits
`<package>.drift.detected`, and when performance is below `monitoring.performance_threshold`
`<package>.performance.degraded`; the retrain deployment's trigger in prefect.yaml listens for both, so
retraining is Prefect's decision to make (with its cooldown and concurrency limit), not this flow's.
An event counts as sent only when the server shows it (read back through the REST API); when it cannot be
confirmed after `monitoring.event_retries` more tries over the REST API, the report, alert and gauges still
go out and then the run fails saying the retrain signal was lost.
When the request log does not reach back to the start of the window, or had lines that are no record, the
verdict, the artifact and a warning say so (`window`, `skipped_lines`).
Every run also pushes its gauges to the Pushgateway (when configured) and, when it asks for retraining,
sends the webhook alert (when configured). A gateway or webhook that does not answer is a warning, never a
failed run; a webhook that is misconfigured (a Secret block that does not exist, a value that is not a URL)
fails the run with the setting's name, after the event is out, so the mistake is seen at once.
After the usual checks, the watch after rollout (monitoring/rollout_watch.py) compares the model promoted
last with the one it replaced; when it is worse beyond the [rollout] thresholds the previous model is made
production again (the service swaps back by itself), `<package>.model.rolled_back` is sent with the same
confirmed delivery, the webhook says so, and the `rollout-watch` artifact shows the evidence per version.
The watch never fails the run: whatever goes wrong with it is in verdict["rollout"] and the log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

# Evidently is slow to import (docs/decisions.md#import-times). Imported with the flow, it is loaded before a
# run starts (when a worker loads the flow), not inside the run, between drift and the retraining it asks for.
import evidently  # noqa: F401
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import Event, emit_event

from .. import tables
from ..config import Settings, get_settings
from ..monitoring import drift, rollout_watch, served_traffic
from ..monitoring import labels as label_table
from ..registry import aliases, promotion, store
from ..serving.request_log import describe_bad_lines

ARTIFACT_KEY = "drift-report"
ROLLOUT_ARTIFACT_KEY = "rollout-watch"


class SignalLost(RuntimeError):
    """A retrain event the Prefect server never showed: no retraining will start from it."""


class EventNotConfirmed(RuntimeError):
    """One attempt at sending an event ended without the server showing it (the task retries)."""


def load_current(
    settings: Settings, current_path: str | None, start: datetime, end: datetime
) -> tuple[pd.DataFrame, pd.Series | None, served_traffic.Window | None, str]:
    """The batch to check: a file when one is given (or monitoring.source is "file"), else the request
    log's window. Returns the features, the served predictions (None for a file), the window, and a label
    for the source."""
    if current_path or settings.monitoring.source == "file":
        path = settings.resolve(current_path or settings.monitoring.current_path)
        return tables.read_table(path), None, None, str(path)
    window = served_traffic.read_window(settings.resolve(settings.serving.request_log_path), start, end)
    return window.features, window.predictions, window, window.describe()


def predictions_for(model: store.RegisteredModel, frame: pd.DataFrame) -> pd.Series:
    """What the model predicts for `frame` (the reference, or a file batch that was never served)."""
    return pd.Series(model.pipeline.predict(frame), index=frame.index).astype(_prediction_type(model))


def _prediction_type(model: store.RegisteredModel) -> Literal["float64", "str"]:
    return "float64" if model.metadata["task_type"] == "regression" else "str"


def too_few_rows(source: str, rows: int, minimum: int, model_tag: str) -> dict[str, Any]:
    """A verdict that says there was not enough to judge: no drift verdict, no event, and why."""
    message = (
        f"{source}: {rows} rows, fewer than monitoring.min_rows ({minimum}); no drift verdict. "
        "Send more traffic, widen monitoring.window_hours, or lower monitoring.min_rows."
    )
    return {
        "model_version": model_tag,
        "source": source,
        "n_current": rows,
        "drift_share": 0.0,
        "drifted": False,
        "threshold": None,
        "drifted_columns": [],
        "columns": [],
        "prediction_drift": None,
        "performance": None,
        "quality": {"too_few_rows": message},
        "report": None,
        "report_url": None,
    }


@dataclass
class Check:
    """A verdict and what its report is made of; the report is written after the event is out."""

    verdict: dict[str, Any]
    result: drift.DriftResult | None = None
    snapshot: Any = None
    labels: label_table.LabelReadReport | None = None


@task(cache_policy=NO_CACHE)
def check(current_path: str | None, model_tag: str, start: datetime, end: datetime) -> Check:
    settings = get_settings()
    options = settings.monitoring
    model = store.load(model_tag)
    frame, served, window, source = load_current(settings, current_path, start, end)
    about_the_log = log_fields(settings, window)
    if len(frame) < options.min_rows:
        return Check(too_few_rows(source, len(frame), options.min_rows, model_tag) | about_the_log)
    current = drift.prepare_current(frame, model.schema, source)
    kind = _prediction_type(model)
    reference = model.reference.assign(**{drift.PREDICTION: predictions_for(model, model.reference)})
    current_predictions = predictions_for(model, current) if served is None else served.astype(kind)
    current = current.assign(**{drift.PREDICTION: current_predictions.to_numpy()})
    result, snapshot = drift.compute_drift(
        reference,
        current,
        model.schema,
        options.drift_threshold,
        prediction_kind="number" if kind == "float64" else "category",
    )
    performance = None
    labels, label_report = label_table.read(
        settings.resolve(options.labels_path), settings.data.target_column, model.metadata["task_type"]
    )
    if window is not None and labels is not None:
        labels, label_report = label_table.served_only(labels, window, label_report)
        classes = [str(c) for c in getattr(model.pipeline, "classes_", [])] or None
        performance = served_traffic.performance(
            window, labels, model.metadata["task_type"], classes, options.performance_threshold
        )
    verdict = result.as_dict()
    verdict["prediction_drift"] = verdict.pop("prediction")
    verdict |= {
        "model_version": model_tag,
        "source": source,
        "performance": performance,
        "report": None,
        "report_url": None,
        "labels": label_report.as_dict(),
    } | about_the_log
    return Check(verdict, result, snapshot, label_report)


def log_fields(settings: Settings, window: served_traffic.Window | None) -> dict[str, Any]:
    """What the verdict says about the request log it rests on: the window it really covers, and the lines
    it skipped (None and 0 for a file)."""
    if window is None:
        return {"window": None, "skipped_lines": 0, "skipped_where": [], "log_warnings": []}
    warnings = []
    note = None
    if not window.complete:
        note = f"The request log {window.coverage()}: {shortfall_cause(settings, window)}"
        warnings.append(note)
    if window.bad_lines:
        warnings.append(
            f"{describe_bad_lines(list(window.bad_lines))}. They are no records (a write torn "
            "by a killed service or a full disk, or an edit); the rest of the log was read."
        )
    return {
        "window": {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "requested_hours": round(window.requested_hours, 3),
            "covered_hours": round(window.covered_hours, 3),
            "oldest_record": window.oldest_record.isoformat() if window.oldest_record else None,
            "complete": window.complete,
            "note": note,
        },
        "skipped_lines": len(window.bad_lines),
        "skipped_where": [str(bad) for bad in window.bad_lines[:20]],
        "log_warnings": warnings,
    }


def shortfall_cause(settings: Settings, window: served_traffic.Window) -> str:
    """Why the log does not reach back to the window's start, as far as its files tell."""
    serving = settings.serving
    if window.oldest_record is None:
        return "it has no records yet."
    rotated = max((window.backups or {}).values(), default=0)
    if serving.request_log_backups and rotated >= serving.request_log_backups:
        return (
            f"its size ceiling was reached (serving.request_log_backups = {serving.request_log_backups} "
            f"rotated files of serving.request_log_max_bytes = {serving.request_log_max_bytes} bytes), so "
            "older records were deleted; raise request_log_backups (or request_log_max_bytes) to keep "
            "the whole window."
        )
    if window.requested_hours > serving.request_log_retention_hours:
        return (
            f"rotated files are kept serving.request_log_retention_hours = "
            f"{serving.request_log_retention_hours:g} h, less than the window asked for."
        )
    return "there are no older records (the service has been logging only since then)."


@task(cache_policy=NO_CACHE)
def publish(checked: Check) -> dict[str, Any]:
    """The full Evidently report in monitoring.reports_dir and the `drift-report` artifact."""
    verdict = checked.verdict
    if checked.result is None:
        create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=f"# Drift check: not enough data\n\n{verdict['quality']['too_few_rows']}"
            + log_lines(verdict),
        )
        return verdict
    settings = get_settings()
    options = settings.monitoring
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = drift.save_report(checked.snapshot, settings.resolve(options.reports_dir), f"drift-{stamp}")
    report_url = f"{options.reports_url.rstrip('/')}/{report.name}" if options.reports_url else None
    link = f"[{report.name}]({report_url})" if report_url else f"`{report}`"
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=drift.markdown_summary(checked.result, verdict["model_version"], verdict["source"])
        + performance_lines(verdict["performance"])
        + log_lines(verdict)
        + (checked.labels.markdown() if checked.labels else "")
        + f"\n\nFull report: {link}",
        description="Data and prediction drift of the current traffic against the training reference",
    )
    return verdict | {"report": str(report), "report_url": report_url}


def performance_lines(performance: dict[str, Any] | None) -> str:
    if performance is None:
        return ""
    value = "n/a" if performance["value"] is None else f"{performance['value']:.4f}"
    threshold = performance["threshold"]
    state = " (**below threshold**)" if performance["below_threshold"] else ""
    text = (
        f"\n\n## Performance on labelled traffic\n\n{performance['metric']} = {value} on "
        f"{performance['n_labelled']} labelled rows"
        + (f", threshold {threshold}" if threshold else "")
        + state
    )
    return text + (f"\n\n{performance['note']}" if performance["note"] else "")


def log_lines(verdict: dict[str, Any]) -> str:
    """The request log's warnings (short window, skipped lines) for the artifact."""
    if not verdict["log_warnings"]:
        return ""
    return "\n\n## Request log\n\n" + "\n".join(f"- **Warning:** {w}" for w in verdict["log_warnings"])


def reasons(verdict: dict[str, Any]) -> list[str]:
    """Why this verdict asks for retraining (empty: it does not)."""
    found = []
    if verdict["drifted"]:
        found.append(f"drift: share {verdict['drift_share']:.3f} of columns >= {verdict['threshold']}")
    performance = verdict.get("performance") or {}
    if performance.get("below_threshold"):
        found.append(
            f"performance: {performance['metric']} {performance['value']:.4f} "
            f"worse than {performance['threshold']}"
        )
    return found


def events_for(settings: Settings, verdict: dict[str, Any], why: list[str]) -> list[Event]:
    """One event per reason kind (the retrain trigger expects either), each with its id fixed here, so a
    retry sends the same event and the server keeps one."""
    payload = {
        "reason": "; ".join(why),
        "drift_share": verdict["drift_share"],
        "drifted_columns": verdict["drifted_columns"],
        "threshold": verdict["threshold"],
        "n_current": verdict["n_current"],
        "performance": verdict.get("performance"),
    }
    resource = store.event_resource(settings, verdict["model_version"])
    names = []
    if verdict["drifted"]:
        names.append(settings.drift_event)
    if (verdict.get("performance") or {}).get("below_threshold"):
        names.append(settings.performance_event)
    return [Event(event=name, resource=resource, payload=payload) for name in names]


@task(cache_policy=NO_CACHE)
def deliver(event: Event, timeout_seconds: float) -> None:
    """Send `event` and wait until the server shows it. The first try goes through Prefect's events
    connection (emit_event, a websocket, which adds the run as related resources); retries post it to the
    REST API, which works where the websocket is blocked. `emit_event` alone cannot tell whether an event
    arrived (it hands it to a background sender that drops it when it cannot connect), hence the read-back."""
    from prefect.runtime import task_run

    sent = task_run.run_count <= 1 and emit_event(
        event=event.event,
        resource=dict(event.resource),
        payload=event.payload,
        id=event.id,
        occurred=event.occurred,
    )
    if not sent:
        post_event(event)
    if not wait_for_event(event, timeout_seconds):
        raise EventNotConfirmed(
            f"event {event.event} ({event.id}) not shown by the Prefect server within {timeout_seconds:g} s"
        )


def post_event(event: Event) -> None:
    """POST the event to the server's REST API (/events); a failure is logged, the read-back decides."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.request("POST", "/events", json=[event.model_dump(mode="json")])
    except Exception as exc:  # the server may be down for a moment: the retry tries again
        get_run_logger().warning("Posting event %s to the Prefect API failed: %s", event.id, exc)


def wait_for_event(event: Event, timeout_seconds: float) -> bool:
    """Poll the server's events API until it shows `event` (its persister writes in batches, by default
    every 5 s), at most `timeout_seconds`."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    deadline = time.monotonic() + timeout_seconds
    with get_client(sync_client=True) as client:
        while True:
            try:
                # limit: the server refuses the client's default of 100 (its maximum is 50)
                page = client.read_events(filter=EventFilter(id=EventIDFilter(id=[event.id])), limit=1)
                if page.events:
                    return True
            except Exception as exc:  # an API error is no confirmation; keep polling until the deadline
                get_run_logger().debug("Reading event %s back failed: %s", event.id, exc)
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def emit(settings: Settings, verdict: dict[str, Any], why: list[str]) -> tuple[bool, str | None]:
    """Send the retrain events and confirm each; returns (all confirmed, what was lost or None)."""
    options = settings.monitoring
    attempt = deliver.with_options(retries=options.event_retries, retry_delay_seconds=1)
    lost = []
    for event in events_for(settings, verdict, why):
        state = attempt(event, options.event_timeout_seconds, return_state=True)
        if state.is_failed():
            lost.append(f"{event.event} ({event.id})")
    if not lost:
        return True, None
    return False, (
        f"retrain signal lost: the Prefect server did not show {', '.join(lost)} after "
        f"{options.event_retries + 1} tries of {options.event_timeout_seconds:g} s each (the events "
        "connection and the REST API's /events were tried); no retraining will start from this run. "
        "Check that the server is reachable and healthy, then run the monitor again."
    )


@task(cache_policy=NO_CACHE)
def watch_rollout() -> dict[str, Any]:
    """The watch after rollout and, when it says so, the rollback; the `rollout-watch` artifact always.
    Never raises: a watch or rollback that fails is reported in the result (state, reason)."""
    settings = get_settings()
    logger = get_run_logger()
    try:
        result = rollout_watch.watch(settings).as_dict()
    except Exception as exc:  # the monitor's own verdict must stand whatever the watch runs into
        logger.exception("The watch after rollout failed")
        reason = f"the watch failed: {type(exc).__name__}: {exc}"
        result = {"state": "not watched", "reason": reason, "evidence": []}
    if result["state"] == "roll back":
        result |= roll_back(settings, result)
    create_markdown_artifact(
        key=ROLLOUT_ARTIFACT_KEY,
        markdown=rollout_watch.markdown(result),
        description="The model promoted last against the one it replaced, on the traffic each one served",
    )
    return result


def roll_back(settings: Settings, watched: dict[str, Any]) -> dict[str, Any]:
    """Make the previous model production again, unless production changed since the watch judged it;
    returns what happened (state "rolled back" with retired and restored, "already rolled back" when
    another monitor run did it first, or "rollback failed")."""
    try:
        retired, restored = promotion.rollback(settings, reason=watched["reason"], expected=watched["live"])
    except promotion.AlreadyRolledBack as exc:  # two monitor runs judged at once: one acted, nothing failed
        return {"state": "already rolled back", "reason": f"{watched['reason']}; {exc}"}
    except Exception as exc:  # nothing to roll back to, the previous model gone from the store, ...
        return {"state": "rollback failed", "rollback_error": f"{type(exc).__name__}: {exc}"}
    return {"state": "rolled back", "retired": retired, "restored": restored}


def rolled_back_event(settings: Settings, rollout: dict[str, Any]) -> Event:
    """The event of an automatic rollback, about the retired model (resource ids as the drift event's)."""
    retired = rollout["retired"]
    return Event(
        event=settings.rolled_back_event,
        resource=store.event_resource(settings, retired),
        payload={
            "retired": retired,
            "restored": rollout["restored"],
            "reason": rollout["reason"],
            "evidence": rollout.get("evidence", []),
        },
    )


def rollback_text(settings: Settings, rollout: dict[str, Any]) -> str:
    """The webhook message of an automatic rollback (or of one that failed)."""
    project, package = settings.project.name, settings.project.package
    if rollout["state"] == "rolled back":
        retired = rollout["retired"]
        return (
            f"[{project}] model {retired} rolled back automatically: production is {rollout['restored']} "
            f"again\nReason: {rollout['reason']}\nThe rolled-back model is not promoted again on its own; "
            f"`python -m {package} promote --tag {retired} --allow-rolled-back` does."
        )
    return (
        f"[{project}] model {rollout.get('live')} should be rolled back (previous model "
        f"{rollout.get('previous')}) but the rollback failed: {rollout.get('rollback_error')}\n"
        f"Reason: {rollout['reason']}"
    )


def announce_rollback(settings: Settings, rollout: dict[str, Any]) -> dict[str, Any]:
    """The rolled-back event (confirmed as the retrain events are) and the webhook alert; returns
    event_emitted and alerted. Never raises: a lost event or alert is logged."""
    from ..monitoring import alerts

    logger = get_run_logger()
    announced: dict[str, Any] = {"event_emitted": False, "alerted": False}
    if rollout["state"] == "rolled back":
        options = settings.monitoring
        attempt = deliver.with_options(retries=options.event_retries, retry_delay_seconds=1)
        event = rolled_back_event(settings, rollout)
        state = attempt(event, options.event_timeout_seconds, return_state=True)
        announced["event_emitted"] = not state.is_failed()
        if state.is_failed():
            logger.error(
                "The Prefect server did not show %s (%s) after %d tries; the rollback itself stands",
                event.event,
                event.id,
                options.event_retries + 1,
            )
    try:
        if alerts.webhook_url(settings) is None:
            return announced
        sender = alerts.send_alert.with_options(
            retries=settings.alerts.retries, retry_delay_seconds=settings.alerts.retry_delay_seconds
        )
        model = rollout.get("retired") or rollout.get("live")
        announced["alerted"] = sender(rollback_text(settings, rollout), {"model_version": model})
    except Exception as exc:  # an alert that cannot go out is a warning, as for drift alerts
        logger.warning("Rollback alert not delivered: %s: %s", type(exc).__name__, exc)
    return announced


@flow(name="monitor", log_prints=True)
def monitor(
    current_path: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """Check the last monitoring.window_hours of served traffic (or `current_path`, a CSV or Parquet file;
    or the window from `start` to `end`) for drift; `event_emitted` says if retraining was asked for."""
    from ..monitoring import alerts, pushgateway

    settings = get_settings()
    logger = get_run_logger()
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=settings.monitoring.window_hours)
    model_tag = aliases.production_tag(settings)  # the served model's reference is the one that matters
    checked = check(current_path, model_tag, start, end)
    verdict = checked.verdict
    why = reasons(verdict)
    for warning in verdict["log_warnings"] + (checked.labels.warnings() if checked.labels else []):
        logger.warning(warning)
    # The event goes out as soon as the verdict is known: retraining need not wait for the report.
    emitted, lost = emit(settings, verdict, why) if why else (False, None)
    verdict = publish(checked) | {"event_emitted": emitted, "signal_lost": lost}
    if lost:
        logger.error(lost)
    if why:
        logger.warning(
            "Retraining asked for (%s); columns: %s", "; ".join(why), verdict["drifted_columns"][:8]
        )
        verdict["alerted"] = alerts.notify(verdict, settings)
    elif verdict["threshold"] is None:
        logger.warning(verdict["quality"]["too_few_rows"])
    else:
        print(f"No drift: share {verdict['drift_share']:.3f} below threshold {verdict['threshold']}")
    verdict["pushed"] = pushgateway.push_verdict(verdict, settings)
    verdict["rollout"] = rollout = watch_rollout()
    if rollout["state"] in ("rolled back", "rollback failed"):
        logger.warning("Watch after rollout: %s; %s", rollout["state"], rollout["reason"])
        rollout |= announce_rollback(settings, rollout)
    else:
        print(f"Watch after rollout: {rollout['state']}: {rollout['reason']}")
    if lost:  # after the report, the alert and the gauges: they still go out, then the run fails
        raise SignalLost(lost)
    return verdict
