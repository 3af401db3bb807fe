"""How a fitted pipeline is scored: the metrics of the holdout table, the gate and the monitor.

model.py's PRIMARY_METRIC picks one of these per task.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.pipeline import Pipeline


def score(pipeline: Pipeline, features: pd.DataFrame, labels: pd.Series, task_type: str) -> dict[str, float]:
    """Holdout metrics; ROC AUC is one-vs-rest macro when there are more than two classes."""
    if task_type == "classification":
        proba = pipeline.predict_proba(features)
        predicted = pipeline.classes_[np.argmax(proba, axis=1)]
        if proba.shape[1] == 2:
            auc = roc_auc_score(labels, proba[:, 1])
        else:
            auc = roc_auc_score(labels, proba, multi_class="ovr", average="macro", labels=pipeline.classes_)
        return {
            "roc_auc": float(auc),
            "accuracy": float(accuracy_score(labels, predicted)),
            "f1_macro": float(f1_score(labels, predicted, average="macro")),
        }
    predicted = pipeline.predict(features)
    return {
        "rmse": float(root_mean_squared_error(labels, predicted)),
        "mae": float(mean_absolute_error(labels, predicted)),
        "r2": float(r2_score(labels, predicted)),
    }
