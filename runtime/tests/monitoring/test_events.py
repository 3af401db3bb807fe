"""The monitor's events, built from a verdict or a rollback: names, resource and payload as the retrain
trigger (prefect.yaml) and a team's own automations read them. No server: delivery is tested in
runtime/tests/flows/test_flows.py."""

import json

import pytest
from ml_lifecycle._internal.monitoring import events
from ml_lifecycle._internal.monitoring.rollout_watch import Evidence
from ml_lifecycle._internal.monitoring.verdict import Rollout
from ml_lifecycle._internal.registry.store import event_resource

from . import verdicts


def test_a_verdict_with_drift_and_worse_performance_asks_twice_about_its_model(settings):
    drift, performance = events.retrain_events(settings, verdicts.drifted())
    assert (drift.event, performance.event) == (settings.drift_event, settings.performance_event)
    assert drift.id != performance.id  # each its own id, fixed now: a retry resends the same event
    for event in (drift, performance):
        assert dict(event.resource) == event_resource(settings, verdicts.VERSION)
        assert event.payload["reason"] == (
            "drift: share 0.400 of columns >= 0.3; performance: roc_auc 0.7100 worse than 0.8"
        )
    assert drift.payload["drifted_columns"] == ["a", "b"] and drift.payload["n_current"] == 1234
    assert drift.payload["performance"]["below_threshold"] is True
    assert json.loads(json.dumps(drift.payload)) == drift.payload


def test_each_reason_alone_sends_its_own_event(settings):
    (alone,) = events.retrain_events(settings, verdicts.quiet(performance=verdicts.WORSE))
    assert alone.event == settings.performance_event and alone.payload["drift_share"] == 0.0
    (drift,) = events.retrain_events(settings, verdicts.drifted(performance=None))
    assert drift.event == settings.drift_event and drift.payload["performance"] is None


def test_a_quiet_verdict_or_too_few_rows_sends_nothing(settings):
    assert events.retrain_events(settings, verdicts.quiet()) == []
    assert events.retrain_events(settings, verdicts.not_enough()) == []


def test_the_rolled_back_event_is_about_the_retired_model(settings):
    evidence = Evidence("performance", "worse", "roc_auc 0.61 vs 0.80", 0.61, 0.8, 120, 120)
    rollout = Rollout(
        "rolled back", "automatic: roc_auc 0.61 vs 0.80", "p:new", "p:old", evidence=[evidence],
        retired="p:new", restored="p:old",
    )  # fmt: skip
    event = events.rolled_back_event(settings, rollout)
    assert event.event == settings.rolled_back_event
    assert dict(event.resource) == event_resource(settings, "p:new")
    assert event.payload == {
        "retired": "p:new",
        "restored": "p:old",
        "reason": "automatic: roc_auc 0.61 vs 0.80",
        "evidence": [rollout.as_dict()["evidence"][0]],
    }
    with pytest.raises(ValueError, match="no rollback to announce"):
        events.rolled_back_event(settings, Rollout("roll back", "automatic: x", "p:new", "p:old"))


def test_a_lost_signal_says_what_was_tried_and_what_to_do(settings):
    text = events.signal_lost(settings, ["pkg.drift.detected (abc)"])
    tries = settings.monitoring.event_retries + 1
    assert text.startswith("retrain signal lost: the Prefect server did not show pkg.drift.detected (abc)")
    assert f"after {tries} tries of {settings.monitoring.event_timeout_seconds:g} s each" in text
    assert "run the monitor again" in text
