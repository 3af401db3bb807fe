"""Your training data: one function that returns it as one table.

Return the feature columns and the target column (`data.target_column` in settings.toml) as one pandas
DataFrame. Column names are turned into snake_case afterwards and the table is checked before anything is
trained (training/validation.py). Every column you return besides the target is a raw feature the service
asks for in each request: compute derived features in features.py instead, so serving computes them too.
"""

from __future__ import annotations

import pandas as pd
from ml_lifecycle import Settings, normalize_columns, read_table

DEMO_SOURCE = "scikit-learn demo data"


def load_frame(settings: Settings) -> pd.DataFrame:
    """The training table, read fresh on every training run."""
    # ---- YOUR CODE STARTS HERE: load your training data ----
    # By default: the CSV or Parquet file at data.path (settings.toml), or the demo data when it is empty.
    # Join several files here (pandas.merge), query a database, or filter rows; paths in settings.toml are
    # relative to the project: settings.resolve("data/other.csv").
    if settings.data_path is None:
        return demo_frame(settings.data.task_type)
    return read_table(settings.data_path)
    # ---- YOUR CODE ENDS HERE ----


def demo_frame(task_type: str) -> pd.DataFrame:
    """The demo data ships inside scikit-learn, so the demo needs no download."""
    from sklearn.datasets import load_breast_cancer, load_diabetes

    loader = load_breast_cancer if task_type == "classification" else load_diabetes
    return normalize_columns(loader(as_frame=True).frame, DEMO_SOURCE)
