"""The request schema built from a model's feature schema: what the public API lists and accepts."""

import json

import pandas as pd
import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.serving.request_schema import row_model
from ml_lifecycle._internal.tables import conform, feature_schema
from ml_lifecycle._internal.training.pipeline import build_pipeline
from pydantic import ValidationError

from ..conftest import make_frame

PARAMS = {"n_estimators": 20, "max_depth": 5, "min_samples_leaf": 2, "max_features": 0.8}


def with_many_stores(task_type: str, stores: int = 80) -> pd.DataFrame:
    """The usual frame plus a column with more categories than a request schema lists (each repeats)."""
    frame = make_frame(task_type)
    return frame.assign(store=[f"S{i % stores:03d}" for i in range(len(frame))])


def test_a_column_with_many_categories_is_plain_text_and_accepts_new_values(task_type):
    frame = with_many_stores(task_type)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    schema = feature_schema(features)
    model = row_model(schema, max_categories=50)
    document = json.dumps(model.model_json_schema())
    assert "S042" not in document, "the training values are not published"
    assert "enum" in json.dumps(model.model_json_schema()["properties"]["color"])
    row = model(size=0.1, weight=0.2, color="red", store="S999")  # a store opened after training
    pipeline = build_pipeline(schema, "random_forest", task_type, PARAMS, seed=0).fit(features, labels)
    predicted = pipeline.predict(conform(pd.DataFrame([row.model_dump()]), schema))
    assert len(predicted) == 1, "the one-hot encoder ignores the unknown store"


def test_a_column_with_few_categories_lists_them_and_refuses_others(task_type):
    model = row_model(feature_schema(make_frame(task_type).drop(columns=["label"])), max_categories=3)
    assert sorted(model.model_json_schema()["properties"]["color"]["anyOf"][0]["enum"]) == [
        "blue",
        "green",
        "red",
    ]
    with pytest.raises(ValidationError, match="color"):
        model(size=0.1, color="purple")


def test_the_limit_is_a_setting(monkeypatch, task_type):
    monkeypatch.setenv("MY_ML_PROJECT_SERVING__MAX_ENUM_CATEGORIES", "2")
    get_settings.cache_clear()
    try:
        model = row_model(feature_schema(make_frame(task_type).drop(columns=["label"])))
    finally:
        get_settings.cache_clear()
    assert model(size=0.1, color="purple").color == "purple"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"weight": 1.0, "color": "red"}, "size"),
        ({"size": "big", "weight": 1.0, "color": "red"}, "size"),
        ({"size": 1.0, "weight": 1.0, "color": "purple"}, "color"),
        ({"size": 1.0, "weight": 1.0, "color": "red", "height": 3}, "height"),
    ],
)
def test_request_rows_that_do_not_fit_the_model_name_the_field(row, field, task_type):
    """A column left out that never had gaps, text for a number, an unseen category, a column the model
    does not know: each error names the field, so the caller knows what to fix."""
    model = row_model(feature_schema(make_frame(task_type).drop(columns=["label"])))
    with pytest.raises(ValidationError) as error:
        model(**row)
    assert field in {str(part) for err in error.value.errors() for part in err["loc"]}


def test_nullable_columns_may_be_left_out(task_type):
    """weight and color had gaps in training: a request may leave them out, and they arrive as missing."""
    model = row_model(feature_schema(make_frame(task_type).drop(columns=["label"])))
    row = model(size=1.0)
    assert row.weight is None and row.color is None
