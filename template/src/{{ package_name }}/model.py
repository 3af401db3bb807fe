"""The scikit-learn pipeline, its Optuna search space and how a fitted pipeline is scored.

Preprocessing lives inside the pipeline so that the model in the store carries it: the service and the
batch scorer send raw rows, never pre-processed ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

Schema = dict[str, dict[str, Any]]

# The metric each task is tuned and judged on, and whether bigger is better.
PRIMARY_METRIC = {"classification": ("roc_auc", "maximize"), "regression": ("rmse", "minimize")}


def suggest_params(trial: optuna.Trial, family: str, task_type: str) -> dict[str, Any]:
    """The search space; your code here: widen or narrow it for your data."""
    if family == "random_forest":
        return {
            "n_estimators": trial.suggest_int("n_estimators", 20, 200, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 16, log=True),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 20, log=True),
            "max_features": trial.suggest_float("max_features", 0.2, 1.0),
        }
    if family == "gradient_boosting":
        return {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "max_iter": trial.suggest_int("max_iter", 30, 300, log=True),
            "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 7, 63, log=True),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True),
        }
    if family == "linear":
        name = "C" if task_type == "classification" else "alpha"
        return {name: trial.suggest_float(name, 1e-4, 1e3, log=True)}
    raise ValueError(f"unknown model_family {family!r}; use random_forest, gradient_boosting or linear")


def make_estimator(family: str, task_type: str, params: dict[str, Any], seed: int):
    classification = task_type == "classification"
    if family == "random_forest":
        cls = RandomForestClassifier if classification else RandomForestRegressor
        return cls(random_state=seed, n_jobs=1, **params)
    if family == "gradient_boosting":
        cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        return cls(random_state=seed, **params)
    if family == "linear":
        if classification:
            return LogisticRegression(max_iter=2000, random_state=seed, **params)
        return Ridge(random_state=seed, **params)
    raise ValueError(f"unknown model_family {family!r}; use random_forest, gradient_boosting or linear")


def build_pipeline(
    schema: Schema, family: str, task_type: str, params: dict[str, Any], seed: int
) -> Pipeline:
    """Imputation and one-hot encoding inside the pipeline; scaling only where the estimator needs it."""
    numeric = [c for c, spec in schema.items() if spec["kind"] == "number"]
    categorical = [c for c, spec in schema.items() if spec["kind"] == "category"]
    numeric_steps: list[Any] = [SimpleImputer(strategy="median", keep_empty_features=True)]
    if family == "linear":
        numeric_steps.append(StandardScaler())
    transformers: list[tuple[str, Any, list[str]]] = [("numeric", make_pipeline(*numeric_steps), numeric)]
    if categorical:
        transformers.append(
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                categorical,
            )
        )
    preprocess = ColumnTransformer(transformers, remainder="drop")
    return Pipeline([("preprocess", preprocess), ("model", make_estimator(family, task_type, params, seed))])


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
