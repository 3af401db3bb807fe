"""The training steps as plain functions: split, refit the best trial, score it on the holdout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from ..config import Settings
from .metrics import score
from .pipeline import build_pipeline
from .validation import Dataset

if TYPE_CHECKING:  # the service imports this module (onnx_export); it never tunes
    import optuna


@dataclass(frozen=True)
class Split:
    train_x: pd.DataFrame
    train_y: pd.Series
    test_x: pd.DataFrame
    test_y: pd.Series


def split(dataset: Dataset, settings: Settings) -> Split:
    """A fixed-seed holdout split, stratified for classification so every class is in both parts."""
    stratify = dataset.labels if settings.data.task_type == "classification" else None
    train_x, test_x, train_y, test_y = train_test_split(
        dataset.features,
        dataset.labels,
        test_size=settings.data.test_size,
        random_state=settings.data.seed,
        stratify=stratify,
    )
    return Split(train_x, train_y, test_x, test_y)


def with_rows(parts: Split, frame: pd.DataFrame, target: str) -> Split:
    """The split with more training rows (labelled traffic); the holdout stays the configured data's, so
    every model is scored on the same rows."""
    if frame.empty:
        return parts
    return Split(
        train_x=pd.concat([parts.train_x, frame.drop(columns=[target])], ignore_index=True),
        train_y=pd.concat([parts.train_y, frame[target]], ignore_index=True),
        test_x=parts.test_x,
        test_y=parts.test_y,
    )


def best_params(study: optuna.Study) -> dict[str, Any]:
    try:
        return dict(study.best_trial.params)
    except ValueError as exc:  # no completed trial: every trial was pruned or failed
        raise RuntimeError(
            f"Optuna study {study.study_name!r} has no completed trial; raise n_trials or the time budget"
        ) from exc


def refit_and_score(
    parts: Split, schema, params: dict[str, Any], settings: Settings
) -> tuple[Pipeline, dict[str, float]]:
    pipeline = build_pipeline(
        schema, settings.tuning.model_family, settings.data.task_type, params, settings.data.seed
    )
    pipeline.fit(parts.train_x, parts.train_y)
    return pipeline, score(pipeline, parts.test_x, parts.test_y, settings.data.task_type)


def reference_sample(rows: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Rows kept with the model as the drift reference, capped so the model stays small."""
    if len(rows) > settings.registry.reference_rows:
        rows = rows.sample(settings.registry.reference_rows, random_state=settings.data.seed)
    return rows.reset_index(drop=True)
