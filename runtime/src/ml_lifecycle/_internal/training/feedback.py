"""What production taught us, as training rows: the request log's rows joined with their labels.

The service logs every row it predicted (features as sent, request id, row, time) to the store, each
replica its own objects; labels arrive later in `monitoring.labels_path` or as objects under labels/ in the
store (request_id, the target column, optional row). Joined on request id and row by
the monitor's own join (monitoring/labels.py `join`: the last label of a request row wins), the
labelled rows of the last `feedback.window_hours` become training data beside the configured data, so a
retrain after the world changed learns the change instead of resuming the same study on the same file.

The newest `feedback.recent_share` of them is held out by time, never trained on: the gate's recent slice,
the rows that say how a model does now. A label that cannot be used is skipped and counted by cause in the
labels' LabelReadReport (monitoring/labels.py: no request id, a bad row, no target or the wrong type, a
superseded duplicate, a request not in the window, plus here a class the data never had), never a crash;
with fewer than `feedback.min_rows` usable rows the configured data trains alone, and the note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from pandas.api import types as ptypes

from .. import tables
from ..config import Settings
from ..monitoring import labels as label_table
from ..monitoring.served_traffic import class_text, read_window

UNSEEN_CLASS = "a class the training data does not have"
MISSING_COLUMN = "a row without a training column (served by a model with other columns)"


@dataclass(frozen=True)
class Feedback:
    """Labelled traffic split by time: `train` (older, trained on) and `recent` (newest, held out); both
    have the training data's columns, target included, oldest first."""

    train: pd.DataFrame
    recent: pd.DataFrame
    labels: label_table.LabelReadReport = field(default_factory=lambda: label_table.LabelReadReport(""))
    note: str = ""

    @property
    def used(self) -> bool:
        return not self.train.empty

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped labels per cause."""
        return dict(self.labels.skipped)

    def warnings(self) -> list[str]:
        """One line with the skipped labels by cause and the file to fix (none when all were usable)."""
        return self.labels.warnings()

    def sources(self, configured: pd.DataFrame, source: str) -> list[dict[str, Any]]:
        """Where a model's rows came from: content hash and row count of each part."""
        parts = [("configured data", source, configured)]
        if self.used:
            parts += [
                ("labelled traffic, trained on", "request log + labels", self.train),
                ("labelled traffic, recent slice (held out)", "request log + labels", self.recent),
            ]
        return [
            {"part": part, "source": origin, "rows": len(frame), "hash": tables.data_hash(frame)}
            for part, origin, frame in parts
        ]


def none(note: str, columns: list[str], labels: label_table.LabelReadReport | None = None) -> Feedback:
    empty = pd.DataFrame(columns=columns)
    return Feedback(train=empty, recent=empty, labels=labels or label_table.LabelReadReport(""), note=note)


def load(settings: Settings, configured: pd.DataFrame, target: str, now: datetime | None = None) -> Feedback:
    """The labelled traffic to learn from, for training data `configured` (its columns and classes)."""
    options = settings.feedback
    columns = list(configured.columns)
    if options.window_hours == 0:
        return none("feedback.window_hours is 0: training on the configured data alone", columns)
    labels, report = label_table.read(settings, target, settings.data.task_type)
    if labels is None or labels.empty:
        where = report.path or settings.monitoring.labels_path
        why = report.problem or f"no {'labels' if labels is None else 'usable label'} in {where}"
        return none(f"{why}: training on the configured data alone", columns, report)
    now = now or datetime.now(UTC)
    window = read_window(settings, now - timedelta(hours=options.window_hours), now)
    joined, report = label_table.join(window, labels, report)  # oldest first, as the log
    values, causes = _labels_like(joined["label"], configured[target], settings.data.task_type)
    bad = pd.Series(False, index=values.index)
    for cause, mask in causes.items():
        report = report.skip(cause, int(mask.sum()))
        bad |= mask
    features = window.features.iloc[joined["position"][~bad]].reset_index(drop=True)
    missing = [c for c in columns if c != target and c not in features.columns]
    if missing:
        report = report.skip(MISSING_COLUMN, len(features))
        return none(f"the logged rows lack {missing}: training on the configured data alone", columns, report)
    rows = _like(features, configured.drop(columns=[target]))
    rows[target] = values[~bad].reset_index(drop=True)
    rows = rows[columns]
    if options.max_rows and len(rows) > options.max_rows:
        rows = rows.tail(options.max_rows)  # the log is oldest first: keep the newest
    if len(rows) < options.min_rows:
        note = (
            f"{len(rows)} usable labelled row(s) in the last {options.window_hours:g} h, fewer than "
            f"feedback.min_rows ({options.min_rows}): training on the configured data alone"
        )
        return none(note, columns, report)
    recent = math.ceil(options.recent_share * len(rows))
    note = (
        f"{len(rows)} labelled rows of the last {options.window_hours:g} h: {len(rows) - recent} trained on, "
        f"the newest {recent} held out as the gate's recent slice"
    )
    return Feedback(
        train=rows.iloc[:-recent].reset_index(drop=True),
        recent=rows.iloc[-recent:].reset_index(drop=True),
        labels=report,
        note=note,
    )


def _labels_like(
    labels: pd.Series, target: pd.Series, task_type: str
) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Labels as values of the training target, and a mask of the unusable ones per cause."""
    labels = labels.reset_index(drop=True)
    numbers = pd.to_numeric(labels, errors="coerce")
    if task_type == "regression":  # the labels reader skipped the ones that are no number
        return numbers, {}
    # A class is matched by its text, so 1, 1.0 and "1" from a CSV all mean the training data's class 1.
    classes = {class_text(value): value for value in target.unique()}
    values = labels.map(lambda value: classes.get(class_text(value)))
    wrong_type = numbers.isna() if ptypes.is_numeric_dtype(target) else pd.Series(False, index=labels.index)
    return values, {label_table.NOT_A_NUMBER: wrong_type, UNSEEN_CLASS: values.isna() & ~wrong_type}


def _like(features: pd.DataFrame, configured: pd.DataFrame) -> pd.DataFrame:
    """The logged features with the training data's columns and kinds (JSON has no ints or categories)."""
    rows = pd.DataFrame(index=features.index)
    for column in configured.columns:
        kind = configured[column]
        if ptypes.is_numeric_dtype(kind) and not ptypes.is_bool_dtype(kind):
            rows[column] = pd.to_numeric(features[column], errors="coerce").astype(float)
        else:
            rows[column] = features[column].astype(object)
    return rows
