"""Monitoring flow: the traffic the service saw (or a file) against the production model's training reference.

The steps, in order: check the batch (monitoring/check.py makes the Verdict, monitoring/verdict.py); send
the retrain events it asks for, confirmed on the server (monitoring/events.py), as soon as it is known;
write the Evidently report and the `drift-report` artifact; send the webhook alert (monitoring/alerts.py)
and push the gauges (monitoring/pushgateway.py); watch the model promoted last (monitoring/rollout_watch.py)
and roll it back when it is worse, announcing the rollback with the same confirmed delivery and a webhook
message. A gateway or webhook that does not answer is a warning, never a failed run; a misconfigured webhook
fails the run after the event is out. The watch never fails the run: what goes wrong with it is in the
verdict's `rollout`. An event the server never shows fails the run, last, with SignalLost: the report, alert
and gauges still go out first. The flow returns `Verdict.as_dict()`, the mapping users' scripts read.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

# Evidently is slow to import (docs/decisions.md#import-times). Imported with the flow, it is loaded before a
# run starts (when a worker loads the flow), not inside the run, between drift and the retraining it asks for.
import evidently  # noqa: F401
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ..config import Settings, get_settings
from ..monitoring import alerts, drift, events, pushgateway, rollout_watch
from ..monitoring import check as checking
from ..monitoring.events import SignalLost
from ..monitoring.verdict import Rollout, Verdict
from ..registry import aliases, promotion
from ..reports import pictures
from ..storage import StorageError, open_storage

__all__ = ["ARTIFACT_KEY", "ROLLOUT_ARTIFACT_KEY", "SignalLost", "monitor"]

ARTIFACT_KEY = "drift-report"
ROLLOUT_ARTIFACT_KEY = "rollout-watch"


@task(cache_policy=NO_CACHE)
def check(current_path: str | None, model_tag: str, start: datetime, end: datetime) -> checking.Checked:
    """The verdict on the batch against the production model's training reference."""
    return checking.check(get_settings(), current_path, model_tag, start, end)


@task(cache_policy=NO_CACHE)
def publish(checked: checking.Checked) -> tuple[Verdict, str | None]:
    """The full Evidently report under reports/ in the store (storage.url) and the `drift-report` artifact
    linking it; with the reason when the store refused the report (the artifact says so too), so the run
    still alerts and pushes its gauges, then fails."""
    verdict = checked.verdict
    if verdict.drift is not None:  # the picture first: it never fails the run, the report below may
        pictures.show_drift(get_settings(), verdict.drift, verdict.model_version, verdict.source)
    if checked.report is None:
        create_markdown_artifact(key=ARTIFACT_KEY, markdown=verdict.markdown())
        return verdict, None
    settings = get_settings()
    description = "Data and prediction drift of the current traffic against the training reference"
    try:
        store = open_storage(settings)
        key = drift.save_report(checked.report, store, datetime.now(UTC))
        report_url = drift.report_link(store, key, settings.monitoring.reports_url)
    except StorageError as exc:
        create_markdown_artifact(
            key=ARTIFACT_KEY, markdown=verdict.markdown(f"not stored: {exc}"), description=description
        )
        return verdict, f"the drift report was not stored: {exc}"
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=verdict.markdown(f"[{key.rsplit('/', 1)[-1]}]({report_url})"),
        description=description,
    )
    return replace(verdict, report=store.url_of(key), report_url=report_url), None


@task(cache_policy=NO_CACHE)
def watch_rollout() -> Rollout:
    """The watch after rollout and, when it says so, the rollback; the `rollout-watch` artifact always.
    Never raises: a watch or rollback that fails is reported in the result (state, reason)."""
    settings = get_settings()
    try:
        rollout = Rollout.watched(rollout_watch.watch(settings))
    except Exception as exc:  # the monitor's own verdict must stand whatever the watch runs into
        get_run_logger().exception("The watch after rollout failed")
        rollout = Rollout("not watched", f"the watch failed: {type(exc).__name__}: {exc}")
    if rollout.state == "roll back":
        rollout = roll_back(settings, rollout)
    description = "The model promoted last against the one it replaced, on the traffic each one served"
    result = rollout.as_dict()
    text, title = rollout_watch.markdown(result), f"Watch after rollout: {rollout.state}"
    # The before/after picture leads the artifact when two models were compared; else, or when it cannot
    # be drawn, the artifact is the text alone.
    shown = rollout.live and pictures.show_picture(
        settings,
        ROLLOUT_ARTIFACT_KEY,
        title,
        lambda: pictures.rollout_watch(result),
        caption=text.removeprefix(f"# {title}\n\n"),
        description=description,
    )
    if not shown:
        create_markdown_artifact(key=ROLLOUT_ARTIFACT_KEY, markdown=text, description=description)
    return rollout


def roll_back(settings: Settings, watched: Rollout) -> Rollout:
    """Make the previous model production again, unless production changed since the watch judged it:
    state "rolled back" (with retired and restored), "already rolled back" when another monitor run did it
    first, or "rollback failed"."""
    try:
        retired, restored = promotion.rollback(settings, reason=watched.reason, expected=watched.live)
    except promotion.AlreadyRolledBack as exc:  # two monitor runs judged at once: one acted, nothing failed
        return replace(watched, state="already rolled back", reason=f"{watched.reason}; {exc}")
    except Exception as exc:  # nothing to roll back to, the previous model gone from the store, ...
        return replace(watched, state="rollback failed", rollback_error=f"{type(exc).__name__}: {exc}")
    return replace(watched, state="rolled back", retired=retired, restored=restored)


def announce_rollback(settings: Settings, rollout: Rollout) -> Rollout:
    """The rolled-back event (confirmed as the retrain events are) and the webhook alert. Never raises: a
    lost event or alert is logged, the rollback stands."""
    emitted = False
    if rollout.state == "rolled back":
        lost = events.send(settings, [events.rolled_back_event(settings, rollout)])
        if lost:
            get_run_logger().error(
                "The Prefect server did not show %s after %d tries; the rollback itself stands",
                lost[0],
                settings.monitoring.event_retries + 1,
            )
        emitted = not lost
    return replace(rollout, event_emitted=emitted, alerted=alerts.notify_rollback(rollout, settings))


@flow(name="monitor", log_prints=True)
def monitor(
    current_path: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """Check the last monitoring.window_hours of served traffic (or `current_path`, a CSV or Parquet file;
    or the window from `start` to `end`) for drift; `event_emitted` says if retraining was asked for."""
    settings = get_settings()
    logger = get_run_logger()
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=settings.monitoring.window_hours)
    model_tag = aliases.production_tag(settings)  # the served model's reference is the one that matters
    checked = check(current_path, model_tag, start, end)
    why = checked.verdict.reasons()
    for warning in checked.verdict.warnings():
        logger.warning(warning)
    # The events go out as soon as the verdict is known: retraining need not wait for the report.
    lost = events.send(settings, events.retrain_events(settings, checked.verdict))
    signal_lost = events.signal_lost(settings, lost) if lost else None
    published, report_lost = publish(checked)
    verdict = replace(published, event_emitted=bool(why) and not lost, signal_lost=signal_lost)
    for lost_what in filter(None, (signal_lost, report_lost)):
        logger.error(lost_what)
    if why:
        logger.warning("Retraining asked for (%s); columns: %s", "; ".join(why), verdict.drifted_columns[:8])
        verdict = replace(verdict, alerted=alerts.notify(verdict, settings))
    elif verdict.too_few_rows:
        logger.warning(verdict.too_few_rows)
    else:
        print(f"No drift: share {verdict.drift_share:.3f} below threshold {verdict.threshold}")
    verdict = replace(verdict, pushed=pushgateway.push_verdict(verdict, settings))
    rollout = watch_rollout()
    if rollout.to_announce:
        logger.warning("Watch after rollout: %s; %s", rollout.state, rollout.reason)
        rollout = announce_rollback(settings, rollout)
    else:
        print(f"Watch after rollout: {rollout.state}: {rollout.reason}")
    if signal_lost:  # after the report, the alert and the gauges: they still go out, then the run fails
        raise SignalLost(signal_lost)
    if report_lost:  # likewise: a store that refuses the report fails the run, last
        raise StorageError(report_lost)
    return replace(verdict, rollout=rollout).as_dict()
