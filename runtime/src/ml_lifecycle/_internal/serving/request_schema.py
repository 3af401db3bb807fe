"""The request schema, built from the feature schema recorded with the model at training time.

Building it from the model (not from code) means a retrained model with a new column gets a matching API
without a code change, and a request that does not fit the model is refused with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..config import get_settings
from ..tables import FLOAT32_MAX

# Bounded to float32 (tables.FLOAT32_MAX): a larger number became infinity inside a tree model (a 500 found
# by schemathesis). NaN and infinity are refused too: a missing value is null.
Number = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


def listed_categories(spec: dict[str, Any], limit: int) -> tuple[str, ...] | None:
    """The values a category field is restricted to, or None when it takes any text.

    A column with more than `limit` categories (serving.max_enum_categories) is not enumerated: its values
    would fill the public OpenAPI document and every 400, and a value the model never saw is harmless there,
    since the pipeline's one-hot encoder ignores unknown categories."""
    categories = tuple(spec.get("categories") or ())
    return categories if 0 < len(categories) <= limit else None


def field_for(spec: dict[str, Any], max_categories: int) -> tuple[Any, Any]:
    if spec["kind"] == "number":
        kind: Any = Number
    else:
        categories = listed_categories(spec, max_categories)
        kind = Literal[categories] if categories else str
    if spec.get("nullable"):
        return kind | None, Field(default=None)
    return kind, Field(...)


def row_model(
    schema: dict[str, dict[str, Any]], name: str = "Features", max_categories: int | None = None
) -> type[BaseModel]:
    """A pydantic model of one row: unknown fields are refused, so a misspelt column is not ignored.

    `max_categories` defaults to serving.max_enum_categories."""
    if max_categories is None:
        max_categories = get_settings().serving.max_enum_categories
    # Any: mypy checks a **dict's values against every keyword of create_model (__config__, __doc__, ...).
    fields: dict[str, Any] = {column: field_for(spec, max_categories) for column, spec in schema.items()}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


class RowPrediction(BaseModel):
    """One row's answer, as the batching core returns it: a prediction, or why the model refused the row."""

    prediction: float | int | str | None = None
    probabilities: dict[str, float] | None = Field(
        default=None, description="Class probabilities (classification only)"
    )
    error: str | None = None
    model_version: str = ""  # the model that predicted (or refused) the row

    def value(self) -> float | int | str:
        """The prediction of a row the model did not refuse (rows it refused are a 400 before this)."""
        if self.prediction is None:
            raise ValueError(f"no prediction for this row: {self.error}")
        return self.prediction


class Prediction(BaseModel):
    """The answer of POST /predict: one entry per row, in the order of the request."""

    predictions: list[float | int | str]
    probabilities: list[dict[str, float]] | None = Field(
        default=None, description="Class probabilities per row (classification only)"
    )
    model_version: str
    request_id: str


class OnePrediction(BaseModel):
    """The answer of POST /predict_one."""

    prediction: float | int | str
    probabilities: dict[str, float] | None = Field(
        default=None, description="Class probabilities (classification only)"
    )
    model_version: str
    request_id: str
