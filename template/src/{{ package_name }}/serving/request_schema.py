"""The request schema, built from the feature schema recorded with the model at training time.

Building it from the model (not from code) means a retrained model with a new column gets a matching API
without a code change, and a request that does not fit the model is refused with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

# The largest float32: scikit-learn's tree models compute in float32, and a larger number becomes infinity
# inside them (a 500 found by schemathesis). NaN and infinity are refused too: a missing value is null.
FLOAT32_MAX = 3.4028234663852886e38
Number = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


def field_for(spec: dict[str, Any]) -> tuple[Any, Any]:
    if spec["kind"] == "number":
        kind: Any = Number
    else:
        categories = tuple(spec.get("categories") or ())
        kind = Literal[categories] if categories else str
    if spec.get("nullable"):
        return kind | None, Field(default=None)
    return kind, Field(...)


def row_model(schema: dict[str, dict[str, Any]], name: str = "Features") -> type[BaseModel]:
    """A pydantic model of one row: unknown fields are refused, so a misspelt column is not ignored."""
    # Any: mypy checks a **dict's values against every keyword of create_model (__config__, __doc__, ...).
    fields: dict[str, Any] = {column: field_for(spec) for column, spec in schema.items()}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


class RowPrediction(BaseModel):
    """One row's answer, as the batching core returns it: a prediction, or why the model refused the row."""

    prediction: float | int | str | None = None
    probabilities: dict[str, float] | None = Field(
        default=None, description="Class probabilities (classification only)"
    )
    error: str | None = None

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
