"""Monitoring flow: the traffic the service saw (or a file) against the production model's training reference.

Data drift per column and prediction drift (Evidently), a data-quality summary, and, when labels for the
window exist, the model's performance. When the share of drifted columns reaches the threshold it emits
`<package>.drift.detected`, and when performance is below `monitoring.performance_threshold`
`<package>.performance.degraded`; the retrain deployment's trigger in prefect.yaml listens for both, so
retraining is Prefect's decision to make (with its cooldown and concurrency limit), not this flow's.
Every run also pushes its gauges to the Pushgateway (when configured) and, when it asks for retraining,
sends the webhook alert (when configured). A gateway or webhook that does not answer is a warning, never a
failed run; a webhook that is misconfigured (a Secret block that does not exist, a value that is not a URL)
fails the run with the setting's name, after the event is out, so the mistake is seen at once.
"""

from __future__ import annotations

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
from prefect.events import emit_event

from .. import tables
from ..config import Settings, get_settings
from ..monitoring import drift, served_traffic
from ..registry import aliases, store

ARTIFACT_KEY = "drift-report"


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


@task(cache_policy=NO_CACHE)
def check(current_path: str | None, model_tag: str, start: datetime, end: datetime) -> Check:
    settings = get_settings()
    options = settings.monitoring
    model = store.load(model_tag)
    frame, served, window, source = load_current(settings, current_path, start, end)
    if len(frame) < options.min_rows:
        return Check(too_few_rows(source, len(frame), options.min_rows, model_tag))
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
    labels = served_traffic.read_labels(settings.resolve(options.labels_path), settings.data.target_column)
    if window is not None and labels is not None:
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
    }
    return Check(verdict, result, snapshot)


@task(cache_policy=NO_CACHE)
def publish(checked: Check) -> dict[str, Any]:
    """The full Evidently report in monitoring.reports_dir and the `drift-report` artifact."""
    verdict = checked.verdict
    if checked.result is None:
        create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=f"# Drift check: not enough data\n\n{verdict['quality']['too_few_rows']}",
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


def emit(settings: Settings, verdict: dict[str, Any], why: list[str]) -> bool:
    """One event per reason kind; the retrain trigger expects either."""
    payload = {
        "reason": "; ".join(why),
        "drift_share": verdict["drift_share"],
        "drifted_columns": verdict["drifted_columns"],
        "threshold": verdict["threshold"],
        "n_current": verdict["n_current"],
        "performance": verdict.get("performance"),
    }
    resource = {
        "prefect.resource.id": f"{settings.model_name}.model.{verdict['model_version']}",
        "prefect.resource.name": verdict["model_version"],
    }
    names = []
    if verdict["drifted"]:
        names.append(settings.drift_event)
    if (verdict.get("performance") or {}).get("below_threshold"):
        names.append(settings.performance_event)
    return all(emit_event(event=name, resource=resource, payload=payload) is not None for name in names)


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
    # The event goes out as soon as the verdict is known: retraining need not wait for the report.
    emitted = bool(why) and emit(settings, verdict, why)
    verdict = publish(checked) | {"event_emitted": emitted}
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
    return verdict
