"""Your features: transformers that run inside the model's pipeline, on the raw columns of each row.

Why here and not in dataset.py: the pipeline is what training, the service and the batch scorer all run,
so a feature computed here is computed the same way everywhere, and requests keep sending raw columns only.
A column added in dataset.py would instead become a field every request has to send (training/serving skew).

Each step takes a DataFrame and returns one (scikit-learn's fit/transform); the columns it adds go through
the same imputation and encoding as the raw ones. A step that ONNX cannot convert is fine: the service then
serves with scikit-learn and logs why (runtime/docs/serving.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class Ratio(BaseEstimator, TransformerMixin):
    """A new column `name` = numerator / denominator; missing where the denominator is 0 or missing."""

    def __init__(self, numerator: str, denominator: str, name: str = "") -> None:
        self.numerator = numerator
        self.denominator = denominator
        self.name = name

    def fit(self, X: pd.DataFrame, y: object = None) -> Ratio:  # noqa: N803  (scikit-learn's names)
        missing = [c for c in (self.numerator, self.denominator) if c not in X.columns]
        if missing:
            raise ValueError(
                f"features.Ratio: columns {missing} not in the data; columns are {list(X.columns)}"
            )
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)  # also marks the step as fitted
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        denominator = X[self.denominator].astype("float64").replace(0, np.nan)
        ratio = X[self.numerator].astype("float64") / denominator
        return X.assign(**{self.output_name(): ratio})

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.append(self.feature_names_in_, self.output_name())

    def output_name(self) -> str:
        return self.name or f"{self.numerator}_per_{self.denominator}"


def feature_steps() -> list[tuple[str, TransformerMixin]]:
    """The steps, in order, each a (name, transformer) pair; an empty list adds no feature."""
    return [
        # ---- YOUR CODE STARTS HERE: feature steps ----
        # The worked example, off by default: the ratio of two numeric columns. With the demo data
        # (breast cancer) this line adds mean_area / mean_perimeter; name your own columns:
        # ("area_per_perimeter", Ratio("mean_area", "mean_perimeter")),
        # ---- YOUR CODE ENDS HERE ----
    ]
