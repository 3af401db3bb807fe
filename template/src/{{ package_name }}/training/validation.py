"""The training data, checked before anything is trained: the user's frame from dataset.py, its columns
normalised, then validated.

Bad data must stop a run before anything is trained or saved, with a message that names the source and the
column, because a model trained on half-read data is worse than no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pandas.api import types as ptypes

from .. import dataset
from ..config import Settings
from ..tables import DataError, normalize_column, normalize_columns


@dataclass(frozen=True)
class Dataset:
    frame: pd.DataFrame
    target: str
    source: str

    @property
    def features(self) -> pd.DataFrame:
        return self.frame.drop(columns=[self.target])

    @property
    def labels(self) -> pd.Series:
        return self.frame[self.target]


def validate(frame: pd.DataFrame, target: str, task_type: str, source: str) -> Dataset:
    if target not in frame.columns:
        raise DataError(
            f"{source}: target column {target!r} not found; columns are {sorted(frame.columns)}; "
            "set data.target_column in settings.toml"
        )
    labels = frame[target]
    if labels.isna().any():
        rows = labels.index[labels.isna()].tolist()[:5]
        raise DataError(
            f"{source}: target column {target!r} has missing values (rows {rows}); drop or fill them"
        )
    if task_type == "regression" and not ptypes.is_numeric_dtype(labels):
        raise DataError(
            f"{source}: target column {target!r} must be numeric for regression but has type {labels.dtype}; "
            "fix the values or choose task_type classification"
        )
    if task_type == "classification" and labels.nunique() < 2:
        raise DataError(
            f"{source}: target column {target!r} has a single class; classification needs two or more"
        )
    if frame.shape[1] < 2:
        raise DataError(f"{source}: no feature columns besides the target {target!r}")
    if len(frame) < 20:
        raise DataError(f"{source}: only {len(frame)} rows; training needs at least 20")
    for column in frame.columns.drop(target):
        values = frame[column]
        if values.isna().all():
            raise DataError(f"{source}: column {column!r} is empty; drop it or fill it")
        if not (ptypes.is_numeric_dtype(values) or ptypes.is_bool_dtype(values) or _is_text(values)):
            raise DataError(
                f"{source}: column {column!r} has type {values.dtype}; use numbers or text categories"
            )
    return Dataset(frame=frame.reset_index(drop=True), target=target, source=source)


def _is_text(values: pd.Series) -> bool:
    return (
        ptypes.is_object_dtype(values)
        or ptypes.is_string_dtype(values)
        or isinstance(values.dtype, pd.CategoricalDtype)
    )


def load_dataset(settings: Settings) -> Dataset:
    """The frame from dataset.load_frame, its columns normalised, validated."""
    source = str(settings.data_path) if settings.data_path else dataset.DEMO_SOURCE
    frame = dataset.load_frame(settings)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(
            f"dataset.load_frame returned {type(frame).__name__}, not a pandas DataFrame; return one frame "
            "with the feature columns and the target column"
        )
    target = normalize_column(settings.data.target_column)
    return validate(normalize_columns(frame, source), target, settings.data.task_type, source)
