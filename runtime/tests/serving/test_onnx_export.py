"""ONNX export: every model family converts and ONNX Runtime agrees with scikit-learn; failures are clear."""

import json

import numpy as np
import onnx
import pandas as pd
import pytest
from ml_lifecycle._internal.registry import aliases, store
from ml_lifecycle._internal.serving import onnx_export
from ml_lifecycle._internal.tables import data_hash, feature_schema
from ml_lifecycle._internal.training.pipeline import build_pipeline
from sklearn.base import BaseEstimator, TransformerMixin

from ..conftest import clear_alias, make_frame

FAMILIES = ["random_forest", "gradient_boosting", "linear"]
TOLERANCE = 1e-4


def params_for(family: str, task_type: str) -> dict:
    return {
        "random_forest": {"n_estimators": 30, "max_depth": 6, "min_samples_leaf": 2, "max_features": 0.8},
        "gradient_boosting": {
            "learning_rate": 0.1,
            "max_iter": 40,
            "max_leaf_nodes": 15,
            "l2_regularization": 1e-3,
        },
        "linear": {"strength": 1.0},
    }[family]


def fitted(family: str, task_type: str, tmp_path, via_csv: bool = True) -> store.RegisteredModel:
    """A model as training makes it: fitted on rows read from a CSV (missing text is NaN there)."""
    frame = make_frame(task_type, seed=3)
    if via_csv:
        frame.to_csv(tmp_path / "train.csv", index=False)
        frame = pd.read_csv(tmp_path / "train.csv")
    features, labels = frame.drop(columns=["label"]), frame["label"]
    schema = feature_schema(features)
    pipeline = build_pipeline(schema, family, task_type, params_for(family, task_type), seed=0)
    pipeline.fit(features, labels)
    metadata = {"task_type": task_type, "feature_schema": schema}
    return store.RegisteredModel("test:1", pipeline, metadata, schema, features)


def new_rows(task_type: str) -> pd.DataFrame:
    """Rows the model never saw, with missing numbers and missing categories."""
    return make_frame(task_type, rows=300, seed=5).drop(columns=["label"])


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_and_onnx_runtime_agrees(family, task, tmp_path):
    model = fitted(family, task, tmp_path)
    onx = onnx_export.convert(model)
    rows = new_rows(task)
    assert rows[["weight", "color"]].isna().any().all(), (
        "the check must cover missing numbers and missing categories"
    )
    largest, count = onnx_export.compare(model, onnx_export.session(onx), rows, TOLERANCE)
    assert count == len(rows) and largest <= TOLERANCE
    meta = {p.key: p.value for p in onx.metadata_props}
    assert meta["model_tag"] == "test:1" and json.loads(meta["feature_schema"]) == model.schema


def test_a_model_fitted_on_in_memory_rows_with_none_also_agrees(tmp_path, task_type):
    """None (not NaN) in the training text is a category of its own for scikit-learn; ONNX must agree."""
    model = fitted("random_forest", task_type, tmp_path, via_csv=False)
    largest, _ = onnx_export.compare(
        model, onnx_export.session(onnx_export.convert(model)), new_rows(task_type), TOLERANCE
    )
    assert largest <= TOLERANCE


class Clip(BaseEstimator, TransformerMixin):
    """A step of the user's own, which skl2onnx knows nothing about."""

    def fit(self, X, y=None):  # noqa: N803
        return self

    def transform(self, X):  # noqa: N803
        return np.clip(X, -3, 3)


def test_a_step_without_converter_is_named(tmp_path, task_type):
    model = fitted("linear", task_type, tmp_path)
    numeric = model.pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    numeric.steps.append(("clip", Clip()))
    with pytest.raises(
        onnx_export.NotConvertible, match=r"step 'preprocess > numeric > clip' \(.*Clip\) has no ONNX"
    ):
        onnx_export.convert(model)


class Skewed:
    """An ONNX session whose answers are off by a little more than the tolerance."""

    def __init__(self, inner):
        self.inner = inner

    def run(self, names, feed):
        outputs = self.inner.run(names, feed)
        return (
            [outputs[0], *[np.asarray(o) + 10 * TOLERANCE for o in outputs[1:]]]
            if len(outputs) > 1
            else [np.asarray(outputs[0]) * (1 + 10 * TOLERANCE)]
        )


@pytest.fixture
def production(csv_settings, task_type, tmp_path):
    model = fitted("gradient_boosting", task_type, tmp_path)
    frame = make_frame(task_type, seed=3)
    tag = store.save(
        csv_settings,
        model.pipeline,
        schema=model.schema,
        reference=model.reference,
        metrics={},
        params={},
        data_hash=data_hash(frame),
    )
    aliases.change(csv_settings, lambda record: record.history.append(aliases.entry(tag, "test")))
    yield tag
    clear_alias(csv_settings)


def test_export_writes_the_production_model_after_checking_it(csv_settings, production, tmp_path):
    result = onnx_export.export(csv_settings, output=tmp_path / "edge" / "model.onnx")
    assert result.tag == production and result.rows_checked > 100
    assert result.max_difference <= csv_settings.onnx.tolerance
    loaded = onnx.load(result.path)
    assert {p.key: p.value for p in loaded.metadata_props}["model_tag"] == production
    assert [i.name for i in loaded.graph.input] == ["size", "weight", "color"]


def test_an_export_that_disagrees_writes_nothing(csv_settings, production, tmp_path, monkeypatch):
    real_session = onnx_export.session
    monkeypatch.setattr(onnx_export, "session", lambda onx: Skewed(real_session(onx)))
    target = tmp_path / "edge" / "model.onnx"
    with pytest.raises(onnx_export.NotEquivalent, match="ONNX Runtime differs from scikit-learn on"):
        onnx_export.export(csv_settings, output=target)
    assert not target.parent.exists() or not list(target.parent.iterdir())
