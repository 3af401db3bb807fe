"""Push the monitor's verdict to a Prometheus Pushgateway, for Grafana panels and Prometheus alert rules.

The monitor is a batch job that Prometheus cannot scrape, hence the gateway. Each push builds a fresh
registry and PUTs it, which replaces the whole group of the job: a column that no longer exists, or a
performance metric that was not computed this time, disappears instead of showing its last value forever.
Monitoring the monitor is a side job, so a gateway that is down costs a warning, never the monitor run.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from ..config import PACKAGE, Settings

if TYPE_CHECKING:
    from .drift import ColumnDrift
    from .verdict import Performance, Verdict

DRIFT_SHARE = f"{PACKAGE}_drift_share"
DRIFT_DETECTED = f"{PACKAGE}_drift_detected"
COLUMN_DRIFT_SCORE = f"{PACKAGE}_column_drift_score"
COLUMN_DRIFTED = f"{PACKAGE}_column_drifted"
PREDICTION_DRIFT_SCORE = f"{PACKAGE}_prediction_drift_score"
ROWS_CHECKED = f"{PACKAGE}_rows_checked"
MODEL_PERFORMANCE = f"{PACKAGE}_model_performance"
PERFORMANCE_BELOW_THRESHOLD = f"{PACKAGE}_performance_below_threshold"
LAST_SUCCESS = f"{PACKAGE}_monitor_last_success_timestamp_seconds"

# Every gauge a push can hold; the Grafana dashboard and the alert rules are tested against this list.
PUSHED_METRICS = (
    DRIFT_SHARE,
    DRIFT_DETECTED,
    COLUMN_DRIFT_SCORE,
    COLUMN_DRIFTED,
    PREDICTION_DRIFT_SCORE,
    ROWS_CHECKED,
    MODEL_PERFORMANCE,
    PERFORMANCE_BELOW_THRESHOLD,
    LAST_SUCCESS,
)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger when pushing from a flow, so a gateway warning lands in the run's log in the UI;
    the module's logger when called from plain Python."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def verdict_registry(verdict: Verdict, now: float | None = None) -> CollectorRegistry:
    """A fresh registry holding the verdict's gauges, each labelled with the model version it judged."""
    registry = CollectorRegistry()
    version = verdict.model_version

    def gauge(name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, [*labels, "model_version"], registry=registry)

    gauge(DRIFT_SHARE, "Share of columns that drifted in the last monitor run").labels(
        model_version=version
    ).set(float(verdict.drift_share))
    gauge(DRIFT_DETECTED, "1 when the drift share reached the threshold in the last monitor run").labels(
        model_version=version
    ).set(1 if verdict.drifted else 0)
    gauge(ROWS_CHECKED, "Rows of the current batch in the last monitor run").labels(
        model_version=version
    ).set(int(verdict.n_current))
    _column_gauges(gauge, verdict.columns, version)
    _prediction_gauge(gauge, verdict.prediction_drift, version)
    _performance_gauges(gauge, verdict.performance, version)
    gauge(LAST_SUCCESS, "Unix time of the last monitor run that pushed its verdict").labels(
        model_version=version
    ).set(time.time() if now is None else now)
    return registry


def _column_gauges(gauge: Any, columns: list[ColumnDrift], version: str) -> None:
    score = gauge(COLUMN_DRIFT_SCORE, "Drift score of a column (the method's distance or p-value)", "column")
    drifted = gauge(COLUMN_DRIFTED, "1 when the column drifted past its method's threshold", "column")
    for column in columns:
        if column.score is not None:
            score.labels(column=column.column, model_version=version).set(float(column.score))
        drifted.labels(column=column.column, model_version=version).set(1 if column.drifted else 0)


def _prediction_gauge(gauge: Any, prediction: ColumnDrift | None, version: str) -> None:
    if prediction is not None and prediction.score is not None:
        gauge(PREDICTION_DRIFT_SCORE, "Drift score of the model's predictions").labels(
            model_version=version
        ).set(float(prediction.score))


def _performance_gauges(gauge: Any, performance: Performance | None, version: str) -> None:
    if performance is None or performance.value is None:
        return
    metric = performance.metric
    gauge(MODEL_PERFORMANCE, "Model performance on the labelled rows of the window", "metric").labels(
        metric=metric, model_version=version
    ).set(float(performance.value))
    if performance.threshold:
        gauge(
            PERFORMANCE_BELOW_THRESHOLD, "1 when performance was worse than its threshold", "metric"
        ).labels(metric=metric, model_version=version).set(1 if performance.below_threshold else 0)


def push_verdict(verdict: Verdict, settings: Settings) -> bool:
    """Push the verdict's gauges to monitoring.pushgateway_url; True when the gateway took them.

    False without a configured gateway, and False with a warning when the gateway cannot be reached or
    refuses the push: the drift verdict, its event and its alert do not depend on the gateway."""
    monitoring = settings.monitoring
    if not monitoring.pushgateway_url:
        return False
    registry = verdict_registry(verdict)
    try:
        push_to_gateway(
            monitoring.pushgateway_url,
            job=monitoring.pushgateway_job,
            registry=registry,
            timeout=monitoring.pushgateway_timeout_seconds,
        )
    except (OSError, ValueError) as exc:  # urllib's URLError and HTTPError are OSErrors; a bad URL ValueError
        _logger().warning(
            "Could not push the monitor's metrics to the Pushgateway at %s (%s). Start the gateway "
            "(`prometheus-pushgateway`, or the prom/pushgateway container) or set monitoring.pushgateway_url "
            'to "" in settings.toml to stop pushing. The drift verdict is not affected.',
            monitoring.pushgateway_url,
            exc,
        )
        return False
    _logger().info(
        "Pushed %d metrics to %s (job %s)",
        sum(1 for family in registry.collect() if family.samples),
        monitoring.pushgateway_url,
        monitoring.pushgateway_job,
    )
    return True
