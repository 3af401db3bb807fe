"""The traffic the service saw, as the monitor reads it: a time window of the request log, and labels.

The service writes every predicted row to its request log (serving/request_log.py): request id, time,
model version, features and prediction. The monitor takes the rows of the last `monitoring.window_hours`,
so drift is measured on what users really sent, not on a file someone prepared. A window says how much of
the requested time the log really covers (it may start later: a service started since, or files rotated
out) and which lines of the log it had to skip (torn lines, named by file and line).

Labels usually arrive later (a sale happens or not, a claim turns out fraudulent). They are a CSV or Parquet
table with a `request_id` column, the target column, and optionally `row` (the row's position in a
/predict request; 0 when absent, which is right for /predict_one), read by monitoring/labels.py (every label
that cannot be used skipped and counted by cause, ids as text). Joined on those, they give the model's
performance on the window with the metric the promotion gate uses (ROC AUC, one-vs-rest macro for
several classes; RMSE for regression).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import mean_squared_error, roc_auc_score

from ..model import PRIMARY_METRIC
from ..serving.request_log import BadLine, ReadReport, read_records
from ..tables import DataError
from . import labels as label_table

START_SLACK = timedelta(minutes=1)  # a log starting this soon after a window's start still covers it


@dataclass(frozen=True)
class Window:
    """The rows the service predicted between `start` and `end` (features as sent, one row per record)."""

    features: pd.DataFrame
    predictions: pd.Series
    probabilities: pd.DataFrame | None
    request_ids: pd.Series
    rows: pd.Series
    model_versions: pd.Series
    start: datetime
    end: datetime
    # The oldest record in the whole log (None: the log is empty): when it is after `start`, the log does
    # not reach back to the start of the window and the window is shorter than asked for.
    oldest_record: datetime | None = None
    bad_lines: tuple[BadLine, ...] = ()
    # Rotated files per worker's log, to tell a log cut by its size ceiling from a young one.
    backups: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def requested_hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    @property
    def covered_hours(self) -> float:
        """The hours of the window the log covers: from its oldest record (or the start) to the end."""
        if self.oldest_record is None:
            return 0.0
        return max(0.0, (self.end - max(self.start, self.oldest_record)).total_seconds() / 3600)

    @property
    def complete(self) -> bool:
        """The log reaches back to the window's start; a first record within a minute of it counts (a
        window started just before the traffic it was opened for, as the demo's are)."""
        return self.oldest_record is not None and self.oldest_record <= self.start + START_SLACK

    def coverage(self) -> str:
        """How much of the window the log covers, e.g. "covers 3.2 h of the requested 24 h"."""
        if self.complete:
            return f"covers the requested {self.requested_hours:g} h"
        oldest = f"oldest record {self.oldest_record:%Y-%m-%d %H:%M} UTC" if self.oldest_record else "empty"
        return f"covers {self.covered_hours:.1f} h of the requested {self.requested_hours:g} h ({oldest})"

    def describe(self) -> str:
        text = f"request log {self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"
        return text if self.complete else f"{text}, which {self.coverage()}"


RECORD_KEYS = ("request_id", "time", "features", "prediction")  # what the monitor needs of each record


def read_window(log_path: str | Path, start: datetime, end: datetime) -> Window:
    """The request log's records with start <= time < end (an empty window when there are none); lines
    that are no record are skipped and listed in the window's `bad_lines`."""
    report = ReadReport()
    records = [
        r
        for r in read_records(log_path, report, required=RECORD_KEYS)
        if start <= datetime.fromisoformat(r["time"]) < end
    ]
    # With several workers, each writing its own file, the window is whole only where every one reaches.
    oldest = max(report.oldest.values(), default=None)
    features = pd.DataFrame([r["features"] for r in records])
    probabilities = [r.get("probabilities") for r in records]
    return Window(
        features=features,
        predictions=pd.Series([r["prediction"] for r in records], dtype=object),
        probabilities=pd.DataFrame(probabilities) if records and all(probabilities) else None,
        # Text, as the labels' ids are: an id such as 00042 is never a number.
        request_ids=pd.Series([str(r["request_id"]) for r in records], dtype=object),
        rows=pd.Series([int(r.get("row", 0)) for r in records], dtype="int64"),
        model_versions=pd.Series([r.get("model_version") for r in records], dtype=object),
        start=start,
        end=end,
        oldest_record=oldest,
        bad_lines=tuple(report.bad_lines),
        backups=dict(report.backups),
    )


def read_labels(path: str | Path, target: str) -> pd.DataFrame | None:
    """The usable labels (request_id, row, label; monitoring/labels.py), the last written of each request
    row, or None when there is no labels file yet; a file that cannot be used at all is a DataError."""
    labels, report = label_table.read(path, target)
    if report.problem:
        raise DataError(report.problem)
    return labels


def performance(
    window: Window, labels: pd.DataFrame, task_type: str, classes: list[str] | None, threshold: float
) -> dict[str, Any] | None:
    """The primary metric on the window's labelled rows, or None when no row has a label.

    `below_threshold` is True when a threshold is set (> 0) and the metric is worse than it: ROC AUC
    below it, RMSE above it. A metric that cannot be computed (one class only among the labels) is
    reported with value None and the reason, never as a failure."""
    served = pd.DataFrame({"request_id": window.request_ids.astype(str), "row": window.rows})
    joined = served.reset_index().merge(labels, on=["request_id", "row"], how="inner")
    if joined.empty:
        return None
    metric, _ = PRIMARY_METRIC[task_type]
    positions = joined["index"].to_numpy()
    value: float | None
    reason = ""
    if task_type == "regression":
        truth = pd.to_numeric(joined["label"], errors="coerce").to_numpy()
        predicted = pd.to_numeric(window.predictions.iloc[positions], errors="coerce").to_numpy()
        usable = ~np.isnan(truth)
        value = float(np.sqrt(mean_squared_error(truth[usable], predicted[usable]))) if usable.any() else None
        if not usable.all():  # a label that is not a number is skipped and counted, never a crash
            reason = f"{int((~usable).sum())} label(s) skipped: not a number"
    else:
        named = {class_text(c): c for c in classes or []}
        observed = joined["label"].map(lambda label: named.get(class_text(label), str(label)))
        value, reason = _roc_auc(observed, window.probabilities, positions, classes or [])
    below = None
    if threshold > 0 and value is not None:
        below = value < threshold if metric == "roc_auc" else value > threshold
    return {
        "metric": metric,
        "value": value,
        "threshold": threshold or None,
        "below_threshold": bool(below) if below is not None else False,
        "n_labelled": len(joined),
        "note": reason,
    }


def class_text(value: Any) -> str:
    """A label as the text of a class: 1, 1.0, "1" and "1.0" (a CSV column with a gap reads as floats) are
    all "1", so labels match the model's classes however the labels file was written."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _roc_auc(
    truth: pd.Series, probabilities: pd.DataFrame | None, positions: np.ndarray, classes: list[str]
) -> tuple[float | None, str]:
    if probabilities is None:
        return None, "the request log has no class probabilities"
    known = truth.isin(classes).to_numpy()
    skipped = ""
    if not known.all():  # skipped and counted, never a crash; the other rows still give the metric
        unknown = sorted(set(truth[~known]))[:5]
        skipped = f"{int((~known).sum())} label(s) skipped: not a class of the model ({unknown})"
        truth, positions = truth[known], positions[known]
    present = sorted(set(truth))
    if len(present) < 2:
        one = f"all labelled rows have one class ({present[0]})" if present else "no labelled row is usable"
        return None, "; ".join(filter(None, [skipped, f"{one}: ROC AUC needs two"]))
    proba = probabilities.iloc[positions][classes].to_numpy(dtype=float)
    if len(classes) == 2:
        return float(roc_auc_score(truth == classes[1], proba[:, 1])), skipped
    return float(roc_auc_score(truth, proba, multi_class="ovr", average="macro", labels=classes)), skipped
