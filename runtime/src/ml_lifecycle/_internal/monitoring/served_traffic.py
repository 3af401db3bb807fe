"""The traffic the service saw, as the monitor reads it: a time window of the request log, and labels.

The service writes every predicted row to its request log (serving/request_log.py): request id, time,
model version, features and prediction, as objects in hourly partitions of the store, one writer per
worker of each replica. The monitor takes the rows of the last `monitoring.window_hours` by listing only
the partitions of those hours, across every replica, so drift is measured on what users really sent, not
on a file someone prepared. A window says how much of the requested time the log really covers (it may
start later: a service started since, or partitions past their retention) and which lines of the log it
had to skip (named by object or file and line).

Labels usually arrive later (a sale happens or not, a claim turns out fraudulent). They are tables (a file
at monitoring.labels_path, objects under labels/ in the store) with a `request_id` column, the target
column, and optionally `row` (the row's position in a
/predict request; 0 when absent, which is right for /predict_one), read by monitoring/labels.py (every label
that cannot be used skipped and counted by cause, ids as text). Joined on those (labels.join, the join
training and the watch use too), they give the model's performance on the window with the metric the
promotion gate uses (model.py's PRIMARY_METRIC, scored on the probabilities or predictions the service
logged).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Settings
from ..records import RequestRecord
from ..serving.request_log import BadLine, ReadReport, log_files, read_records, read_store
from ..storage import Storage, open_storage
from ..tables import DataError
from ..training.metrics import Metric, Output, class_text, primary_metric
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
    # The oldest record of the log (None: the log is empty; a partition's start when one older than the
    # window exists): when it is after `start`, the log does not reach back to the start of the window and
    # the window is shorter than asked for.
    oldest_record: datetime | None = None
    bad_lines: tuple[BadLine, ...] = ()

    def __len__(self) -> int:
        return len(self.features)

    def select(self, rows: Any) -> Window:
        """The rows `rows` picks (a boolean mask or a slice of positions), renumbered from 0: the part one
        model predicted (the watch after rollout), the newest rows (the replay)."""

        def part(values: Any) -> Any:
            return values.iloc[rows].reset_index(drop=True)

        return replace(
            self,
            features=part(self.features),
            predictions=part(self.predictions),
            probabilities=None if self.probabilities is None else part(self.probabilities),
            request_ids=part(self.request_ids),
            rows=part(self.rows),
            model_versions=part(self.model_versions),
        )

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


def read_window(
    source: Settings | Storage | str | Path, start: datetime, end: datetime, *, legacy: bool = True
) -> Window:
    """The request log's records with start <= time < end, oldest first (an empty window when there are
    none); lines that are no record are skipped and listed in the window's `bad_lines`.

    `source`: the project's settings (every replica's partitions in storage.url, plus 2.0.0's files at
    serving.request_log_path while they last), a Storage (its partitions), or the path of a 2.0.0 file."""
    store: Storage | None = None
    path: Path | None = None
    if isinstance(source, Storage):
        store = source
    elif isinstance(source, str | Path):
        path = Path(source)
    else:
        store = open_storage(source)
        path = source.resolve(source.serving.request_log_path) if legacy else None
    records: list[RequestRecord] = []
    oldest: list[datetime] = []
    stored, old = ReadReport(), ReadReport()
    if store is not None:
        records += read_store(store, start, end, stored)
        oldest += stored.oldest.values()
    if path is not None and (path.exists() or log_files(path)):
        records += [r for r in read_records(path, old) if start <= r.time < end]
        # With several 2.0.0 workers, each writing its own file, those reach back only where every one does.
        oldest += [max(old.oldest.values())] if old.oldest else []
        records.sort(key=lambda record: record.time)
    features = pd.DataFrame([r.features for r in records])
    probabilities = [r.probabilities for r in records]
    return Window(
        features=features,
        predictions=pd.Series([r.prediction for r in records], dtype=object),
        probabilities=pd.DataFrame(probabilities) if records and all(probabilities) else None,
        # Text, as the labels' ids are: an id such as 00042 is never a number.
        request_ids=pd.Series([r.request_id for r in records], dtype=object),
        rows=pd.Series([r.row for r in records], dtype="int64"),
        model_versions=pd.Series([r.model_version for r in records], dtype=object),
        start=start,
        end=end,
        oldest_record=min(oldest, default=None),
        bad_lines=tuple(stored.bad_lines + old.bad_lines),
    )


def read_labels(
    source: Settings | str | Path, target: str, task_type: str | None = None
) -> pd.DataFrame | None:
    """The usable labels (request_id, row, label; monitoring/labels.py `read`: the file, and for settings
    the objects under labels/ too), the last written of each request row, or None when there are none yet;
    labels that cannot be used at all are a DataError.
    `task_type` "regression": targets that are not numbers are skipped (and supersede nothing), as the
    monitor flow and training read them."""
    labels, report = label_table.read(source, target, task_type)
    if report.problem:
        raise DataError(report.problem)
    return labels


@dataclass(frozen=True)
class Labelled:
    """The window's rows that have a usable label: their positions in the window, the truth (class text or
    numbers), what the served model output for them (its logged probabilities or predictions), and why
    some labelled rows were skipped ("" when none were)."""

    positions: np.ndarray
    truth: np.ndarray
    output: Output | None
    note: str = ""
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.positions)


def labelled(
    window: Window,
    labels: pd.DataFrame,
    metric: Metric,
    classes: list[str] | None,
    version: str | None = None,
) -> Labelled:
    """The window's rows joined with their labels (labels.join, the one join) that the metric can score;
    with `version`, only the joined rows that version served (the watch after rollout)."""
    joined, _ = label_table.join(window, labels)
    if version is not None:
        joined = joined[(window.model_versions.iloc[joined["position"]] == version).to_numpy()]
    positions = joined["position"].to_numpy()
    if not metric.classifies:
        truth = pd.to_numeric(joined["label"], errors="coerce").to_numpy(dtype=float)
        usable = ~np.isnan(truth)
        # a label that is not a number is skipped and counted, never a crash
        note = "" if usable.all() else f"{int((~usable).sum())} label(s) skipped: not a number"
        predicted = pd.to_numeric(window.predictions.iloc[positions[usable]], errors="coerce")
        return Labelled(
            positions[usable],
            truth[usable],
            predicted.to_numpy(dtype=float),
            note,
            len(truth) - len(predicted),
        )
    # Classes by their text, so 1, 1.0 and "1" in a labels file all match the model's class 1.
    named = [class_text(c) for c in classes or []]
    observed = joined["label"].map(class_text).to_numpy(object)
    if window.probabilities is None:
        return Labelled(positions, observed, None, "the request log has no class probabilities")
    known = np.isin(observed, named)
    note = ""
    if not known.all():  # skipped and counted, never a crash; the other rows still give the metric
        unknown = sorted(set(observed[~known]))[:5]
        note = f"{int((~known).sum())} label(s) skipped: not a class of the model ({unknown})"
    kept = positions[known]
    proba = window.probabilities.iloc[kept][list(classes or [])].reset_index(drop=True)
    proba.columns = named
    return Labelled(kept, observed[known], proba, note, len(observed) - len(kept))


def performance(
    window: Window, labels: pd.DataFrame, task_type: str, classes: list[str] | None, threshold: float
) -> dict[str, Any] | None:
    """The primary metric on the window's labelled rows, or None when no row has a label.

    `below_threshold` is True when a threshold is set (> 0) and the metric is worse than it, in the
    metric's direction. A metric that cannot be computed (one class only among the labels) is reported
    with value None and the reason, never as a failure."""
    metric = primary_metric(task_type)
    found = labelled(window, labels, metric, classes)
    joined = len(found) + found.skipped
    if joined == 0:
        return None
    value, reason = None, found.note
    if found.output is not None and len(found):
        try:
            value = metric.score(found.truth, found.output)
        except ValueError as exc:  # one class only: ROC AUC needs two
            present = sorted(set(found.truth))
            one = f"all labelled rows have one class ({present[0]})" if len(present) == 1 else str(exc)
            reason = "; ".join(filter(None, [reason, f"{one}: {metric.name} cannot be computed"]))
    elif found.output is not None:
        reason = "; ".join(filter(None, [reason, "no labelled row is usable"]))
    below = threshold > 0 and value is not None and metric.worse_than(value, threshold)
    return {
        "metric": metric.name,
        "value": value,
        "threshold": threshold or None,
        "below_threshold": bool(below),
        "n_labelled": joined,
        "note": reason,
    }
