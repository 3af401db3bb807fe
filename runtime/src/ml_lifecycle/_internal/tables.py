"""Tables as every stage reads them: CSV or Parquet in, snake_case columns, the feature schema recorded
with a model, and rows made to fit that schema.

Training, serving, batch scoring and monitoring all go through these functions, so a file or a request is
judged by the same rules everywhere, and a failure names the file and the column.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

# The largest float32: scikit-learn's tree models compute in float32, so a larger number becomes infinity
# inside them. Training refuses such values and the request schema bounds numbers by it.
FLOAT32_MAX = 3.4028234663852886e38


class DataError(ValueError):
    """Data that cannot be used; the message says which file, which column and what to do."""


def normalize_column(name: object) -> str:
    """Column names become snake_case identifiers so they can be request fields and metric labels."""
    cleaned = re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower()
    return f"c_{cleaned}" if not cleaned or cleaned[0].isdigit() else cleaned


def normalize_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    names = [normalize_column(c) for c in frame.columns]
    seen: dict[str, str] = {}
    for original, name in zip(frame.columns, names, strict=True):
        if name in seen:
            raise DataError(
                f"{source}: columns {seen[name]!r} and {original!r} both become {name!r}; rename one of them"
            )
        seen[name] = str(original)
    return frame.set_axis(names, axis=1)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning every failure into a DataError that names the file."""
    if not path.exists():
        raise DataError(f"{path}: file not found; check data.path in settings.toml or the --current argument")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .parquet or .pq")
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            f"{path}: the file is empty; it needs a header row and at least one data row"
        ) from exc
    except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from exc
    if frame.empty:
        raise DataError(f"{path}: the file has no data rows")
    return normalize_columns(frame, str(path))


def feature_schema(features: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """What a request must look like, recorded with the model so serving and monitoring agree with it."""
    schema: dict[str, dict[str, Any]] = {}
    for column in features.columns:
        values = features[column]
        nullable = bool(values.isna().any())
        if ptypes.is_numeric_dtype(values) and not ptypes.is_bool_dtype(values):
            schema[column] = {"kind": "number", "nullable": nullable}
        else:
            categories = sorted(str(v) for v in values.dropna().unique())
            schema[column] = {"kind": "category", "nullable": nullable, "categories": categories}
    return schema


def conform(frame: pd.DataFrame, schema: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Give incoming rows the training columns and types, so the pipeline sees what it was fitted on."""
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise DataError(f"columns missing from the input: {missing}")
    # Built column by column into one new frame: assigning into a copy cost most of the service's time per
    # batch (docs/decisions.md#conforming-rows).
    columns: dict[str, np.ndarray] = {}
    for column, spec in schema.items():
        values = frame[column]
        if spec["kind"] == "number":
            if values.dtype != np.float64:
                values = pd.to_numeric(values, errors="raise").astype("float64")
            columns[column] = values.to_numpy(copy=True)
        else:
            # Missing stays NaN, as in the training frame: the imputer treats NaN as missing but not None,
            # and a None would reach the one-hot encoder as an unknown category instead of being imputed.
            columns[column] = np.array([str(v) if pd.notna(v) else np.nan for v in values], dtype=object)
    return pd.DataFrame(columns, index=frame.index)


def data_hash(frame: pd.DataFrame) -> str:
    """A content hash of the data: the same rows give the same Optuna study, new data a fresh one."""
    digest = hashlib.sha256()
    digest.update(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
