"""The service's runtime: ONNX Runtime when it agrees with scikit-learn, scikit-learn otherwise."""

import json
import logging

import pandas as pd
import pytest
from ml_lifecycle._internal.serving import onnx_export, predictors

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


def test_the_onnx_conversion_is_kept_and_a_file_of_another_model_or_a_torn_one_is_converted_again(
    task_type, tmp_path
):
    """A worker's next start reads the conversion instead of importing skl2onnx (test_service_imports);
    the file is used only for the tag it was converted for, and the check against scikit-learn still runs."""
    model = fitted("random_forest", task_type, tmp_path)
    cache = tmp_path / "onnx" / "pipeline.onnx"
    assert predictors.choose(model, "auto", tolerance=1e-4, cache=cache).name == "onnx"
    kept = cache.read_bytes()
    assert onnx_export.session_of(kept).get_modelmeta().custom_metadata_map["model_tag"] == model.tag
    rows = request_rows(new_rows(task_type))
    again = predictors.choose(model, "auto", tolerance=1e-4, cache=cache)
    assert (
        again.name == "onnx" and again.predict(rows)[0] == predictors.SklearnRuntime(model).predict(rows)[0]
    )

    other = fitted("linear", task_type, tmp_path)
    other = type(other)("test:2", other.pipeline, other.metadata, other.schema, other.reference)
    assert predictors.choose(other, "auto", tolerance=1e-4, cache=cache).name == "onnx"
    assert (
        onnx_export.session_of(cache.read_bytes()).get_modelmeta().custom_metadata_map["model_tag"]
        == "test:2"
    )

    cache.write_bytes(kept[: len(kept) // 2])  # torn
    assert predictors.choose(model, "auto", tolerance=1e-4, cache=cache).name == "onnx"
    assert (
        onnx_export.session_of(cache.read_bytes()).get_modelmeta().custom_metadata_map["model_tag"]
        == model.tag
    )
