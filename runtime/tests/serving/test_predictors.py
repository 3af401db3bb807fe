"""The service's runtime: ONNX Runtime when it agrees with scikit-learn, scikit-learn otherwise."""

import json
import logging

import pandas as pd
import pytest
from ml_lifecycle._internal.serving import predictors

from .test_onnx_export import FAMILIES, Clip, fitted, new_rows


def request_rows(frame: pd.DataFrame) -> list[dict]:
    """Rows as the service gets them from a JSON request: None for every missing value."""
    return json.loads(frame.to_json(orient="records"))


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_runtime_answers_like_scikit_learn(family, task_type, tmp_path):
    model = fitted(family, task_type, tmp_path)
    fast = predictors.choose(model, "auto", tolerance=1e-4)
    assert fast.name == "onnx"
    rows = request_rows(new_rows(task_type))
    labels, proba = fast.predict(rows)
    expected_labels, expected_proba = predictors.SklearnRuntime(model).predict(rows)
    if task_type == "classification":
        assert labels == expected_labels
        assert abs(proba - expected_proba).max() < 1e-4
    else:
        assert labels == pytest.approx(expected_labels, rel=1e-4, abs=1e-4)


def test_a_pipeline_onnx_cannot_convert_is_served_by_scikit_learn_or_refused(task_type, tmp_path):
    model = fitted("linear", task_type, tmp_path)
    model.pipeline.named_steps["preprocess"].named_transformers_["numeric"].steps.append(("clip", Clip()))
    assert predictors.choose(model, "auto", tolerance=1e-4).name == "sklearn"
    with pytest.raises(RuntimeError, match="serving.runtime is 'onnx'.*clip"):
        predictors.choose(model, "onnx", tolerance=1e-4)
    assert predictors.choose(model, "sklearn", tolerance=1e-4).name == "sklearn"


def test_a_feature_step_onnx_cannot_convert_is_served_by_scikit_learn_saying_why(
    ratio_step, task_type, tmp_path, caplog
):
    """features.py's steps are the user's own classes: no ONNX converter knows them, and the log names the
    step and its class so the user sees why the service is slower."""
    model = fitted("random_forest", task_type, tmp_path)
    caplog.set_level(logging.WARNING)
    runtime = predictors.choose(model, "auto", tolerance=1e-4)
    assert runtime.name == "sklearn"
    assert "size_per_weight" in caplog.text and "Ratio" in caplog.text
    rows = request_rows(new_rows(task_type))
    assert len(runtime.predict(rows)[0]) == len(rows)
