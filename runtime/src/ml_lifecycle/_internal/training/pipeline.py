"""The whole scikit-learn pipeline a model is: your features.py steps, imputation and encoding, the estimator.

Everything lives inside the pipeline so the model in the store carries it: the service and the batch scorer
send raw rows, never pre-processed ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ..project import user_module

Schema = dict[str, dict[str, Any]]


def build_pipeline(
    schema: Schema, family: str, task_type: str, params: dict[str, Any], seed: int
) -> Pipeline:
    """Imputation and one-hot encoding per column kind; scaling only where the family asks for it.

    Without feature steps the columns come from the schema, which ONNX export can follow. With them, the
    columns are picked by type when the pipeline is fitted, so the columns the steps add are included."""
    features = user_module("features").feature_steps()
    numeric: Any = [c for c, spec in schema.items() if spec["kind"] == "number"]
    categorical: Any = [c for c, spec in schema.items() if spec["kind"] == "category"]
    if features:
        numeric = make_column_selector(dtype_include=np.number)
        categorical = make_column_selector(dtype_exclude=np.number)
    numeric_steps: list[Any] = [SimpleImputer(strategy="median", keep_empty_features=True)]
    if user_module("model").MODEL_FAMILIES[family].scale_numbers:
        numeric_steps.append(StandardScaler())
    transformers: list[tuple[str, Any, Any]] = [("numeric", make_pipeline(*numeric_steps), numeric)]
    if features or categorical:
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
    steps: list[tuple[str, Any]] = [("features", Pipeline(features))] if features else []
    steps += [
        ("preprocess", ColumnTransformer(transformers, remainder="drop")),
        ("model", user_module("model").make_estimator(family, task_type, params, seed)),
    ]
    return Pipeline(steps)
