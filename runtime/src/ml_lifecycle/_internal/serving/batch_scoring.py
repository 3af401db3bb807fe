"""Batch scoring: a CSV or Parquet file in, the same rows with the production model's predictions out.

The file is checked against the feature schema recorded with the model before anything is predicted, with
the same rules as the service's request schema (a missing column, a value that is not a number, a missing
value where training had none or a category the model never saw stops the run with the file, the column and
the first offending rows named). The output is written to a temporary file beside the target and moved into
place with os.replace, so a reader sees the previous file or the whole new one, never half of one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic_write import write_atomically
from ..config import Settings, get_settings
from ..registry import aliases, store
from ..tables import DataError, conform, read_table
from .request_schema import listed_categories

PREDICTION = "prediction"
MODEL_VERSION = "model_version"
PROBABILITY_PREFIX = "probability_"
OUTPUT_SUFFIXES = {".csv", ".parquet", ".pq"}
# How many offending rows an error message lists.
SHOWN_ROWS = 5


@dataclass(frozen=True)
class ScoringResult:
    input: str
    output: str
    rows: int
    model_version: str
    columns: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_against_schema(frame: pd.DataFrame, schema: dict[str, dict[str, Any]], source: str) -> None:
    """Raise a DataError naming the file and the column when the rows do not fit the model's schema.

    The rules are the service's (request_schema.row_model), applied column by column so a million rows take
    milliseconds: every feature column present; numbers parse as numbers; no missing value where the training
    data had none; categories among those seen in training, for the columns whose categories the request
    schema lists (serving.max_enum_categories). Extra columns are allowed and kept in the output.
    """
    max_categories = get_settings().serving.max_enum_categories
    missing = [column for column in schema if column not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} missing; the model needs {list(schema)} "
            f"(the file has {list(frame.columns)})"
        )
    for column, spec in schema.items():
        values = frame[column]
        absent = values.isna()
        if absent.any() and not spec.get("nullable"):
            raise DataError(
                f"{source}: column {column!r} has missing values (rows {_rows(absent)}) but the model was "
                "trained without any; fill them"
            )
        if spec["kind"] == "number":
            if pd.api.types.is_bool_dtype(values):
                raise DataError(f"{source}: column {column!r} must hold numbers but holds true/false values")
            parsed = pd.to_numeric(values, errors="coerce")
            bad = parsed.isna() & ~absent
            if bad.any():
                raise DataError(
                    f"{source}: column {column!r} must hold numbers; rows {_rows(bad)} hold "
                    f"{_values(values[bad])}"
                )
        else:
            known = set(listed_categories(spec, max_categories) or ())
            if known:
                text = values.astype("object").map(str)  # only rows with a value are compared and named
                bad = ~absent & ~text.isin(known)
                if bad.any():
                    raise DataError(
                        f"{source}: column {column!r} has categories the model never saw: "
                        f"{_values(text[bad])} (rows {_rows(bad)}); known: {sorted(known)}"
                    )


def _rows(mask: pd.Series) -> list[int]:
    """Row numbers as a user counts them in the file: the first data row is row 1."""
    return [int(i) + 1 for i in np.flatnonzero(mask.to_numpy())[:SHOWN_ROWS]]


def _values(values: pd.Series) -> list[str]:
    return [str(v) for v in pd.unique(values)[:SHOWN_ROWS]]


def predict_frame(model: store.RegisteredModel, frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The input rows (every column kept) plus the prediction, per-class probabilities and model version."""
    check_against_schema(frame, model.schema, source)
    taken = [c for c in frame.columns if c in (PREDICTION, MODEL_VERSION) or c.startswith(PROBABILITY_PREFIX)]
    if taken:
        raise DataError(
            f"{source}: column(s) {taken} would be overwritten by the output; rename them in the input"
        )
    features = conform(frame, model.schema)
    pipeline = model.pipeline
    out = frame.copy()
    out[PREDICTION] = pipeline.predict(features)
    if model.metadata.get("task_type") == "classification":
        proba = np.asarray(pipeline.predict_proba(features))
        for index, label in enumerate(pipeline.classes_):
            out[f"{PROBABILITY_PREFIX}{label}"] = proba[:, index]
    out[MODEL_VERSION] = model.tag
    return out


def check_output(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{path}: unsupported output type {path.suffix!r}; use .csv, .parquet or .pq")


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet by the suffix, replaced atomically."""
    check_output(path)
    if path.suffix.lower() == ".csv":
        write_atomically(path, lambda sink: frame.to_csv(sink, index=False))
    else:
        write_atomically(path, lambda sink: frame.to_parquet(sink, index=False))


def score_file(
    settings: Settings, input_path: str | Path, output_path: str | Path, tag: str | None = None
) -> ScoringResult:
    """Score a file with the production model (or `tag`) and write the result atomically."""
    started = time.perf_counter()
    source, target = settings.resolve(input_path), settings.resolve(output_path)
    if source.resolve() == target.resolve():
        raise DataError(f"{target}: the output would replace the input; choose another output file")
    check_output(target)
    model = store.load(tag or aliases.production_tag(settings), settings)
    scored = predict_frame(model, read_table(source), str(source))
    write_table(scored, target)
    return ScoringResult(
        input=str(source),
        output=str(target),
        rows=len(scored),
        model_version=model.tag,
        columns=list(scored.columns),
        seconds=round(time.perf_counter() - started, 3),
    )
