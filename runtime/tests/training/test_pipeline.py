"""The pipeline a model is: features.py's steps, imputation and encoding, the estimator, fitted on raw
columns, so a request's raw row is all the service needs."""

import numpy as np
import pandas as pd
from ml_lifecycle._internal.serving.request_schema import row_model
from ml_lifecycle._internal.tables import conform, feature_schema, read_table
from ml_lifecycle._internal.training.pipeline import build_pipeline

from ..conftest import make_frame


def test_a_row_with_missing_values_predicts_the_same_raw_or_from_json(task_type, tmp_path):
    """A service row arrives with None for a missing value; it must be imputed exactly as in training,
    where the data came from a file (missing text reads as NaN)."""
    path = tmp_path / "train.csv"
    make_frame(task_type).to_csv(path, index=False)
    frame = read_table(path)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    schema = feature_schema(features)
    pipeline = build_pipeline(schema, "linear", task_type, {"strength": 1.0}, seed=0)
    pipeline.fit(features, labels)
    raw = pd.DataFrame({"size": [0.5], "weight": [np.nan], "color": [np.nan]})
    from_json = conform(pd.DataFrame([{"size": 0.5, "weight": None, "color": None}]), schema)
    assert from_json["color"].isna().all()
    output = pipeline.predict_proba if task_type == "classification" else pipeline.predict
    np.testing.assert_allclose(output(from_json), output(raw))


def test_the_derived_column_reaches_the_model_but_not_the_request_schema(ratio_step, task_type):
    """features.py's steps run inside the pipeline: the model sees size_per_weight, and requests keep
    sending the raw columns only."""
    frame = make_frame(task_type, seed=3)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    schema = feature_schema(features)
    pipeline = build_pipeline(schema, "random_forest", task_type, {"n_estimators": 20}, seed=0)
    pipeline.fit(features, labels)
    assert any(name.endswith("size_per_weight") for name in pipeline[:-1].get_feature_names_out())
    assert set(row_model(schema).model_fields) == {"size", "weight", "color"}
