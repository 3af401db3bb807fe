"""The monitor's check: the batch to judge (the request log's window, or a file) against the production
model's training reference, made into the run's Verdict (monitoring/verdict.py), here and nowhere else.

Data drift per column and prediction drift (Evidently), a data-quality summary, and, when labels for the
window exist, the model's performance on them. A batch under `monitoring.min_rows` gets a verdict without
a drift result that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import pandas as pd

from .. import tables
from ..config import Settings
from ..registry import store
from . import drift, served_traffic
from . import labels as label_table
from .verdict import Performance, Verdict, log_report, too_few_rows


@dataclass(frozen=True)
class Checked:
    """A verdict and the samples its full Evidently report is built from (None without a drift result);
    the report is built and written after the event is out."""

    verdict: Verdict
    report: drift.DriftReport | None = None


def load_current(
    settings: Settings, current_path: str | None, start: datetime, end: datetime
) -> tuple[pd.DataFrame, pd.Series | None, served_traffic.Window | None, str]:
    """The batch to check: a file when one is given (or monitoring.source is "file"), else the request
    log's window. Returns the features, the served predictions (None for a file), the window, and a label
    for the source."""
    if current_path or settings.monitoring.source == "file":
        path = settings.resolve(current_path or settings.monitoring.current_path)
        return tables.read_table(path), None, None, str(path)
    window = served_traffic.read_window(settings, start, end)
    return window.features, window.predictions, window, window.describe()


def predictions_for(model: store.RegisteredModel, frame: pd.DataFrame) -> pd.Series:
    """What the model predicts for `frame` (the reference, or a file batch that was never served)."""
    return pd.Series(model.pipeline.predict(frame), index=frame.index).astype(prediction_type(model))


def prediction_type(model: store.RegisteredModel) -> Literal["float64", "str"]:
    return "float64" if model.metadata["task_type"] == "regression" else "str"


def check(
    settings: Settings, current_path: str | None, model_tag: str, start: datetime, end: datetime
) -> Checked:
    """The verdict on the batch from `start` to `end` (or `current_path`) against `model_tag`'s reference."""
    minimum = settings.monitoring.min_rows
    model = store.load(model_tag)
    frame, served, window, source = load_current(settings, current_path, start, end)
    enough = len(frame) >= minimum
    judged = judge(settings, model, frame, served, window, source) if enough else Judged()
    verdict = Verdict(
        model_tag,
        source,
        len(frame),
        log_report(settings, window),
        judged.drift,
        None if enough else too_few_rows(source, len(frame), minimum),
        judged.performance,
        judged.labels,
    )
    return Checked(verdict, judged.report)


@dataclass(frozen=True)
class Judged:
    """What a batch with rows enough is judged on: drift, and performance when labels exist."""

    drift: drift.DriftResult | None = None
    report: drift.DriftReport | None = None
    performance: Performance | None = None
    labels: label_table.LabelReadReport | None = None


def judge(
    settings: Settings,
    model: store.RegisteredModel,
    frame: pd.DataFrame,
    served: pd.Series | None,
    window: served_traffic.Window | None,
    source: str,
) -> Judged:
    """Drift of `frame` (and of the model's predictions on it) against the model's reference, and the
    model's performance on the window's labelled rows."""
    options = settings.monitoring
    current = drift.prepare_current(frame, model.schema, source)
    kind = prediction_type(model)
    reference = model.reference.assign(**{drift.PREDICTION: predictions_for(model, model.reference)})
    current_predictions = predictions_for(model, current) if served is None else served.astype(kind)
    current = current.assign(**{drift.PREDICTION: current_predictions.to_numpy()})
    result, report = drift.compute_drift(
        reference,
        current,
        model.schema,
        options.drift_threshold,
        prediction_kind="number" if kind == "float64" else "category",
    )
    performance = None
    labels, label_report = label_table.read(
        settings, settings.data.target_column, model.metadata["task_type"]
    )
    if window is not None and labels is not None:
        labels, label_report = label_table.served_only(labels, window, label_report)
        classes = [str(c) for c in getattr(model.pipeline, "classes_", [])] or None
        found = served_traffic.performance(
            window, labels, model.metadata["task_type"], classes, options.performance_threshold
        )
        performance = Performance(**found) if found is not None else None
    return Judged(result, report, performance, label_report)
