"""The training data, checked before anything is trained: the user's frame from dataset.py, its columns
normalised, then validated.

Bad data must stop a run before anything is trained or saved, with a message that names the source and the
column, because a model trained on half-read data is worse than no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from ..config import Settings
from ..project import user_module
from ..tables import FLOAT32_MAX, DataError, normalize_column, normalize_columns

MIN_ROWS = 20
# A text column with a different value in at least this share of its rows is an identifier (an id, a
# timestamp read as text, free text), not a category: one-hot encoding learns nothing from it, and the
# request schema would allow only the training rows' values.
IDENTIFIER_SHARE = 0.95
SHOWN = 5  # rows or values an error message lists


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


def validate(
    frame: pd.DataFrame,
    target: str,
    task_type: str,
    source: str,
    *,
    test_size: float = 0.2,
    cv_folds: int = 3,
) -> Dataset:
    """Raise a DataError naming the source and the column for data training cannot use.

    `test_size` and `cv_folds` (data.test_size, tuning.cv_folds) set how many rows each class needs."""
    if target not in frame.columns:
        raise DataError(
            f"{source}: target column {target!r} not found; columns are {sorted(frame.columns)}; "
            "set data.target_column in settings.toml"
        )
    if frame.shape[1] < 2:
        raise DataError(f"{source}: no feature columns besides the target {target!r}")
    if len(frame) < MIN_ROWS:
        raise DataError(f"{source}: only {len(frame)} rows; training needs at least {MIN_ROWS}")
    _check_target(frame[target], target, task_type, source, test_size, cv_folds)
    for column in frame.columns.drop(target):
        _check_feature(frame[column], column, source)
    return Dataset(frame=frame.reset_index(drop=True), target=target, source=source)


def _check_target(
    labels: pd.Series, target: str, task_type: str, source: str, test_size: float, cv_folds: int
) -> None:
    if labels.isna().any():
        raise DataError(
            f"{source}: target column {target!r} has missing values (rows {_rows(labels.isna())}); "
            "drop or fill them"
        )
    if task_type == "regression":
        if not ptypes.is_numeric_dtype(labels):
            raise DataError(
                f"{source}: target column {target!r} must be numeric for regression but has type "
                f"{labels.dtype}; fix the values or choose task_type classification"
            )
        _check_finite(labels, target, source)
        return
    if ptypes.is_float_dtype(labels) and not (labels == np.round(labels)).all():
        fractional = labels[labels != np.round(labels)]
        raise DataError(
            f"{source}: target column {target!r} holds continuous numbers ({labels.nunique()} different "
            f"values, e.g. {_values(fractional)}) but data.task_type is classification; set "
            'task_type = "regression" in settings.toml, or turn the values into classes in dataset.py'
        )
    counts = labels.value_counts()
    if len(counts) < 2:
        raise DataError(
            f"{source}: target column {target!r} has a single class; classification needs two or more"
        )
    needed = min_class_rows(test_size, cv_folds)
    rare = counts[counts < needed]
    if len(rare):
        shown = ", ".join(f"{value!r} ({count})" for value, count in rare.head(SHOWN).items())
        raise DataError(
            f"{source}: target column {target!r} has {len(rare)} class(es) with fewer than {needed} rows: "
            f"{shown}. Each class needs {needed} (some in the data.test_size={test_size} holdout, "
            f"{cv_folds} in the training part for tuning.cv_folds={cv_folds}); add rows, or merge or drop "
            'those classes in dataset.py. If the target is a quantity, set task_type = "regression"'
        )


def _check_feature(values: pd.Series, column: str, source: str) -> None:
    if values.isna().all():
        raise DataError(f"{source}: column {column!r} is empty; drop it or fill it")
    if ptypes.is_bool_dtype(values):
        return
    if ptypes.is_numeric_dtype(values):
        _check_finite(values, column, source)
        return
    if not _is_text(values):
        raise DataError(
            f"{source}: column {column!r} has type {values.dtype}; use numbers or text categories"
        )
    present = values.dropna()
    distinct = present.nunique()
    if len(present) >= MIN_ROWS and distinct >= IDENTIFIER_SHARE * len(present):
        raise DataError(
            f"{source}: column {column!r} looks like an identifier: {distinct} different values in "
            f"{len(present)} rows (e.g. {_values(present)}). A model learns nothing from it and no new row "
            "would match a value seen in training: drop it in dataset.py (frame.drop(columns=[...]) before "
            "returning the frame), or use it there only to join tables"
        )


def _check_finite(values: pd.Series, column: str, source: str) -> None:
    """Infinity, or a number beyond float32 (which tree models compute in), breaks the fit with an error
    from deep inside scikit-learn."""
    numbers = values.astype("float64")
    bad = numbers.abs() > FLOAT32_MAX  # also true for +-inf; NaN compares false (a missing value)
    if bad.any():
        raise DataError(
            f"{source}: column {column!r} has infinite or too large values (beyond +-3.4e38) in rows "
            f"{_rows(bad)}; replace them with a number, or leave the cell empty (missing), in dataset.py"
        )


def min_class_rows(test_size: float, cv_folds: int) -> int:
    """The fewest rows a class can have and still be in the holdout and in every cross-validation fold.

    The stratified split gives each class at least floor(rows * test_size) holdout rows and leaves it at
    least rows - ceil(rows * test_size) - 1 training rows, which must cover the folds."""
    rows = 2
    while math.floor(rows * test_size) < 1 or rows - math.ceil(rows * test_size) - 1 < cv_folds:
        rows += 1
    return rows


def _rows(mask: pd.Series) -> list[int]:
    return mask.index[mask.to_numpy()].tolist()[:SHOWN]


def _values(values: pd.Series) -> list[str]:
    return [str(v) for v in pd.unique(values)[:SHOWN]]


def _is_text(values: pd.Series) -> bool:
    return (
        ptypes.is_object_dtype(values)
        or ptypes.is_string_dtype(values)
        or isinstance(values.dtype, pd.CategoricalDtype)
    )


def load_dataset(settings: Settings) -> Dataset:
    """The frame from dataset.load_frame, its columns normalised, validated."""
    dataset = user_module("dataset")
    source = str(settings.data_path) if settings.data_path else dataset.DEMO_SOURCE
    frame = dataset.load_frame(settings)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(
            f"dataset.load_frame returned {type(frame).__name__}, not a pandas DataFrame; return one frame "
            "with the feature columns and the target column"
        )
    target = normalize_column(settings.data.target_column)
    return validate(
        normalize_columns(frame, source),
        target,
        settings.data.task_type,
        source,
        test_size=settings.data.test_size,
        cv_folds=settings.tuning.cv_folds,
    )
