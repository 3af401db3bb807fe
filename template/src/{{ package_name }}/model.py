"""Your model: the estimator families Optuna can tune, their search spaces, and the metric that judges them.

One table, MODEL_FAMILIES: a family is a name, how to build its estimator for each task it supports
(classification and/or regression) from the parameters Optuna chose and the seed, and the ranges Optuna
searches. Select a family with `tuning.model_family` in settings.toml; the settings refuse a name that is
not in the table. Imputation, encoding and your features.py steps are put in front of the estimator by
the ml-lifecycle library, so a family only names the estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge

if TYPE_CHECKING:  # the service reads this file to check the settings; it never tunes
    import optuna

Params = dict[str, Any]
Factory = Callable[[Params, int], BaseEstimator]


@dataclass(frozen=True)
class ModelFamily:
    """How to build one family's estimator (None: the family does not do that task) and what to search."""

    search_space: Callable[[optuna.Trial], Params]
    classifier: Factory | None = None
    regressor: Factory | None = None
    # Standardise numeric columns before the estimator: linear models need it, trees do not.
    scale_numbers: bool = False

    def factory(self, task_type: str) -> Factory | None:
        return self.classifier if task_type == "classification" else self.regressor


MODEL_FAMILIES: dict[str, ModelFamily] = {
    # ---- YOUR CODE STARTS HERE: model families (name -> estimator and search space) ----
    "random_forest": ModelFamily(
        search_space=lambda trial: {
            "n_estimators": trial.suggest_int("n_estimators", 20, 200, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 16, log=True),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 20, log=True),
            "max_features": trial.suggest_float("max_features", 0.2, 1.0),
        },
        classifier=lambda params, seed: RandomForestClassifier(random_state=seed, n_jobs=1, **params),
        regressor=lambda params, seed: RandomForestRegressor(random_state=seed, n_jobs=1, **params),
    ),
    "gradient_boosting": ModelFamily(
        search_space=lambda trial: {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "max_iter": trial.suggest_int("max_iter", 30, 300, log=True),
            "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 7, 63, log=True),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True),
        },
        classifier=lambda params, seed: HistGradientBoostingClassifier(random_state=seed, **params),
        regressor=lambda params, seed: HistGradientBoostingRegressor(random_state=seed, **params),
    ),
    "linear": ModelFamily(
        # One name for both tasks, so a study's parameters read the same: C for logistic regression,
        # alpha for ridge, both regularisation strengths on a log scale.
        search_space=lambda trial: {"strength": trial.suggest_float("strength", 1e-4, 1e3, log=True)},
        classifier=lambda params, seed: LogisticRegression(
            max_iter=2000, random_state=seed, C=params["strength"]
        ),
        regressor=lambda params, seed: Ridge(random_state=seed, alpha=params["strength"]),
        scale_numbers=True,
    ),
    # ---- YOUR CODE ENDS HERE ----
}

# The metric each task is tuned and judged on, by name: one the ml-lifecycle library knows (classification:
# roc_auc, accuracy, f1_macro; regression: rmse, mae, r2). Each metric knows whether bigger is better; the
# tuning, the promotion gate, the monitor and the watch after rollout all use it. An unknown name is refused
# when the settings load.
PRIMARY_METRIC: dict[str, str] = {
    # ---- YOUR CODE STARTS HERE: primary metric per task ----
    "classification": "roc_auc",
    "regression": "rmse",
    # ---- YOUR CODE ENDS HERE ----
}


def family(name: str, task_type: str) -> ModelFamily:
    """The table's entry, or an error that lists what there is."""
    entry = MODEL_FAMILIES.get(name)
    if entry is None or entry.factory(task_type) is None:
        usable = sorted(n for n, f in MODEL_FAMILIES.items() if f.factory(task_type) is not None)
        raise ValueError(
            f"model family {name!r} is not in model.py's MODEL_FAMILIES for {task_type}; "
            f"add it there or choose one of {usable}"
        )
    return entry


def suggest_params(trial: optuna.Trial, name: str, task_type: str) -> Params:
    return family(name, task_type).search_space(trial)


def make_estimator(name: str, task_type: str, params: Params, seed: int) -> BaseEstimator:
    factory = family(name, task_type).factory(task_type)
    assert factory is not None  # family() refuses a family without one
    return factory(params, seed)
