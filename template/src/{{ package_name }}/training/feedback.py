"""What production taught us, as training rows: the request log's rows joined with their labels.

The service logs every row it predicted (features as sent, request id, row, time); labels arrive later in
`monitoring.labels_path` (request_id, the target column, optional row). Joined on request id and row, the
labelled rows of the last `feedback.window_hours` become training data beside the configured data, so a
retrain after the world changed learns the change instead of resuming the same study on the same file.

The newest `feedback.recent_share` of them is held out by time, never trained on: the gate's recent slice,
the rows that say how a model does now. A label that cannot be used is skipped and counted by cause (unknown
request id, duplicate, a class the data never had, the wrong type), never a crash; with fewer than
`feedback.min_rows` usable rows the configured data trains alone, and the note says so.
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
from ..monitoring.served_traffic import class_text, read_label_rows, read_window

UNKNOWN_ID = "unknown request id (not in the request log's window)"
DUPLICATE_LABEL = "duplicate label for one request row (the last one is kept)"
UNSEEN_CLASS = "a class the training data does not have"
WRONG_TYPE = "a label that is not a number"
MISSING_COLUMN = "a row without a training column (served by a model with other columns)"


@dataclass(frozen=True)
class Feedback:
    """Labelled traffic split by time: `train` (older, trained on) and `recent` (newest, held out); both
    have the training data's columns, target included, oldest first."""

    train: pd.DataFrame
    recent: pd.DataFrame
    skipped: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def used(self) -> bool:
        return not self.train.empty

    def warnings(self) -> list[str]:
        """One line per cause of skipped labels, naming the file to fix."""
        return [f"{count} label(s) skipped: {cause}" for cause, count in self.skipped.items() if count]

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


def none(note: str, columns: list[str], skipped: dict[str, int] | None = None) -> Feedback:
    empty = pd.DataFrame(columns=columns)
    return Feedback(train=empty, recent=empty, skipped=skipped or {}, note=note)


def load(settings: Settings, configured: pd.DataFrame, target: str, now: datetime | None = None) -> Feedback:
    """The labelled traffic to learn from, for training data `configured` (its columns and classes)."""
    options = settings.feedback
    columns = list(configured.columns)
    if options.window_hours == 0:
        return none("feedback.window_hours is 0: training on the configured data alone", columns)
    labels_path = settings.resolve(settings.monitoring.labels_path)
    labels = read_label_rows(labels_path, target)
    if labels is None or labels.empty:
        return none(f"no labels in {labels_path}: training on the configured data alone", columns)
    now = now or datetime.now(UTC)
    window = read_window(
        settings.resolve(settings.serving.request_log_path), now - timedelta(hours=options.window_hours), now
    )
    served = pd.DataFrame(
        {"request_id": window.request_ids.astype(str), "row": window.rows, "position": range(len(window))}
    ).drop_duplicates(["request_id", "row"], keep="last")
    skipped = {DUPLICATE_LABEL: int(labels.duplicated(["request_id", "row"]).sum())}
    labels = labels.drop_duplicates(["request_id", "row"], keep="last")
    joined = labels.merge(served, on=["request_id", "row"], how="left")
    skipped[UNKNOWN_ID] = int(joined["position"].isna().sum())
    joined = joined.dropna(subset=["position"]).reset_index(drop=True)
    values, causes = _labels_like(joined["label"], configured[target], settings.data.task_type)
    bad = pd.Series(False, index=values.index)
    for cause, mask in causes.items():
        skipped[cause] = int(mask.sum())
        bad |= mask
    features = window.features.iloc[joined["position"][~bad].astype(int)].reset_index(drop=True)
    missing = [c for c in columns if c != target and c not in features.columns]
    if missing:
        skipped[MISSING_COLUMN] = len(features)
        return none(
            f"the logged rows lack {missing}: training on the configured data alone", columns, skipped
        )
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
        return none(note, columns, skipped)
    recent = math.ceil(options.recent_share * len(rows))
    note = (
        f"{len(rows)} labelled rows of the last {options.window_hours:g} h: {len(rows) - recent} trained on, "
        f"the newest {recent} held out as the gate's recent slice"
    )
    return Feedback(
        train=rows.iloc[:-recent].reset_index(drop=True),
        recent=rows.iloc[-recent:].reset_index(drop=True),
        skipped=skipped,
        note=note,
    )


def _labels_like(
    labels: pd.Series, target: pd.Series, task_type: str
) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Labels as values of the training target, and a mask of the unusable ones per cause."""
    labels = labels.reset_index(drop=True)
    numbers = pd.to_numeric(labels, errors="coerce")
    if task_type == "regression":
        return numbers, {WRONG_TYPE: numbers.isna()}
    # A class is matched by its text, so 1, 1.0 and "1" from a CSV all mean the training data's class 1.
    classes = {class_text(value): value for value in target.unique()}
    values = labels.map(lambda value: classes.get(class_text(value)))
    wrong_type = numbers.isna() if ptypes.is_numeric_dtype(target) else pd.Series(False, index=labels.index)
    return values, {WRONG_TYPE: wrong_type, UNSEEN_CLASS: values.isna() & ~wrong_type}


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
