"""The BentoML service: one class that loads the newest registered model once and answers predictions.

The request schema is built when this module is imported, from the feature schema stored with the model,
so `bentoml serve` refuses to start (with a message saying to train first) when there is no model.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from .config import get_settings
from .data import conform
from .registry import latest_tag
from .schema import row_model

SETTINGS = get_settings()
MODEL_TAG = latest_tag(SETTINGS)
_MODEL_INFO = bentoml.models.get(MODEL_TAG)
FEATURE_SCHEMA: dict = _MODEL_INFO.info.metadata["feature_schema"]
TASK_TYPE: str = _MODEL_INFO.info.metadata["task_type"]
Features = row_model(FEATURE_SCHEMA)
# Rows per request: an empty list would reach scikit-learn and fail with a 500, a huge one stalls a worker.
MAX_ROWS = 1000


class Prediction(BaseModel):
    predictions: list[float | int | str]
    probabilities: list[dict[str, float]] | None = Field(
        default=None, description="Class probabilities per row (classification only)"
    )
    model_version: str


@bentoml.service(name=SETTINGS.model_name.replace("_", "-") + "-service", traffic={"timeout": 30})
class Predictor:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.pipeline = bentoml.sklearn.load_model(self.model)
        self.version = str(self.model.tag)

    @bentoml.api
    def predict(
        self,
        rows: Annotated[list[Features], Field(min_length=1, max_length=MAX_ROWS)],  # type: ignore[valid-type]
    ) -> Prediction:
        """Predict for one or more rows; each row's fields are the training columns."""
        frame = conform(pd.DataFrame([row.model_dump() for row in rows]), FEATURE_SCHEMA)
        predictions = self.pipeline.predict(frame)
        probabilities = None
        if TASK_TYPE == "classification":
            classes = [str(c) for c in self.pipeline.classes_]
            proba = self.pipeline.predict_proba(frame)
            probabilities = [dict(zip(classes, map(float, row), strict=True)) for row in np.asarray(proba)]
        return Prediction(
            predictions=[_plain(p) for p in predictions],
            probabilities=probabilities,
            model_version=self.version,
        )


def _plain(value):
    """numpy scalars to plain Python, so the response serializes the same for every estimator."""
    return value.item() if hasattr(value, "item") else value
