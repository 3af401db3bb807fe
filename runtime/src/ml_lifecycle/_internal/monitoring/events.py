"""The monitor's Prefect events and their confirmed delivery.

`<package>.drift.detected` and `<package>.performance.degraded` ask for retraining (the retrain
deployment's trigger in prefect.yaml listens for both, so retraining is Prefect's decision, with its cooldown
and concurrency limit); `<package>.model.rolled_back` says the watch after rollout put the previous model
back. An event counts as sent only when the server shows it, read back through the REST API: `emit_event`
alone cannot tell (it hands the event to a background sender that drops it when it cannot connect). Each
event's id is fixed when it is built, so a retry sends the same event and the server keeps one.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import Event, emit_event

from ..registry import store

if TYPE_CHECKING:
    from ..config import Settings
    from .verdict import Rollout, Verdict


class SignalLost(RuntimeError):
    """A retrain event the Prefect server never showed: no retraining will start from it."""


class EventNotConfirmed(RuntimeError):
    """One attempt at sending an event ended without the server showing it (the task retries)."""


def retrain_events(settings: Settings, verdict: Verdict) -> list[Event]:
    """One event per reason the verdict asks for retraining (the retrain trigger expects either); none
    when it does not."""
    why = verdict.reasons()
    names = [settings.drift_event] if verdict.drifted else []
    names += [settings.performance_event] if verdict.performance_below else []
    payload = {
        "reason": "; ".join(why),
        "drift_share": verdict.drift_share,
        "drifted_columns": verdict.drifted_columns,
        "threshold": verdict.threshold,
        "n_current": verdict.n_current,
        "performance": asdict(verdict.performance) if verdict.performance else None,
    }
    resource = store.event_resource(settings, verdict.model_version)
    return [Event(event=name, resource=resource, payload=payload) for name in names]


def rolled_back_event(settings: Settings, rollout: Rollout) -> Event:
    """The event of an automatic rollback, about the retired model (resource ids as the drift event's)."""
    if rollout.retired is None or rollout.restored is None:
        raise ValueError(f"no rollback to announce: the watch's state is {rollout.state!r}")
    return Event(
        event=settings.rolled_back_event,
        resource=store.event_resource(settings, rollout.retired),
        payload={
            "retired": rollout.retired,
            "restored": rollout.restored,
            "reason": rollout.reason,
            "evidence": [asdict(item) for item in rollout.evidence],
        },
    )


@task(cache_policy=NO_CACHE)
def deliver(event: Event, timeout_seconds: float) -> None:
    """Send `event` and wait until the server shows it. The first try goes through Prefect's events
    connection (emit_event, a websocket, which adds the run as related resources); retries post it to the
    REST API, which works where the websocket is blocked."""
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


def send(settings: Settings, events: list[Event]) -> list[str]:
    """Deliver each event, retried `monitoring.event_retries` times; returns the ones the server never
    showed, as "name (id)" (empty: all confirmed)."""
    options = settings.monitoring
    attempt = deliver.with_options(retries=options.event_retries, retry_delay_seconds=1)
    lost = []
    for event in events:
        if attempt(event, options.event_timeout_seconds, return_state=True).is_failed():
            lost.append(f"{event.event} ({event.id})")
    return lost


def signal_lost(settings: Settings, lost: list[str]) -> str:
    """What the run says, and fails with, when retrain events were never confirmed."""
    options = settings.monitoring
    return (
        f"retrain signal lost: the Prefect server did not show {', '.join(lost)} after "
        f"{options.event_retries + 1} tries of {options.event_timeout_seconds:g} s each (the events "
        "connection and the REST API's /events were tried); no retraining will start from this run. "
        "Check that the server is reachable and healthy, then run the monitor again."
    )
