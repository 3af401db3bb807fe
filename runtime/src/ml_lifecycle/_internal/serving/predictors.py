"""How the service computes predictions: ONNX Runtime when the pipeline converts and agrees with
scikit-learn, else scikit-learn itself (`serving.runtime`: "auto", "onnx" or "sklearn").

Why: a scikit-learn call has a fixed cost that batching cannot hide, and ONNX Runtime answers the
same batch for a small fraction of it (docs/decisions.md#serving-runtime).

The same pipeline, preprocessing included, is converted at service start (onnx_export.py) and checked
against scikit-learn on the reference rows stored with the model: the same labels, probabilities or
predictions within onnx.tolerance. When conversion or the check fails, "auto" serves with scikit-learn
and says why in the log and on /metrics (the `runtime` label of the model_info gauge); "onnx" refuses to
start instead.

Both runtimes take rows as dicts (the validated request fields) and return, per row, the label (the most
probable class, as scikit-learn's classifiers decide it) or the predicted value, and class probabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .. import tables
from ..registry.store import RegisteredModel
from . import onnx_export

logger = logging.getLogger(__name__)


class Runtime(Protocol):
    name: str
    classes: list[str] | None

    def predict(self, rows: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray | None]:
        """Labels or values, and class probabilities (None for regression); ValueError for bad rows."""
        ...


class SklearnRuntime:
    name = "sklearn"

    def __init__(self, model: RegisteredModel) -> None:
        self.pipeline = model.pipeline
        self.schema = model.schema
        regression = model.metadata["task_type"] == "regression"
        self.classes = None if regression else [str(c) for c in self.pipeline.classes_]

    def predict(self, rows: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray | None]:
        frame = tables.conform(pd.DataFrame(rows), self.schema)
        if self.classes is None:
            return [_plain(v) for v in self.pipeline.predict(frame)], None
        proba = np.asarray(self.pipeline.predict_proba(frame))
        return [_plain(c) for c in self.pipeline.classes_.take(proba.argmax(axis=1))], proba


class OnnxRuntime:
    name = "onnx"

    def __init__(self, model: RegisteredModel, session: Any) -> None:
        self.session = session
        self.schema = model.schema
        regression = model.metadata["task_type"] == "regression"
        self.labels = None if regression else model.pipeline.classes_
        self.classes = None if self.labels is None else [str(c) for c in self.labels]
        self.numbers = [c for c, spec in self.schema.items() if spec["kind"] == "number"]
        self.texts = [c for c, spec in self.schema.items() if spec["kind"] != "number"]

    def feed(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """One [rows, 1] array per column, built from the dicts directly (building a DataFrame costs many
        times more on small batches: docs/decisions.md#serving-runtime); NaN and onnx_export.MISSING_TEXT
        for missing values, as onnx_export.feed writes them."""
        arrays = {}
        for column in self.numbers:
            values = [row.get(column) for row in rows]
            arrays[column] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        for column in self.texts:
            values = [row.get(column) for row in rows]
            arrays[column] = np.array(
                [onnx_export.MISSING_TEXT if v is None else str(v) for v in values], dtype=object
            )
        return {column: values.reshape(-1, 1) for column, values in arrays.items()}

    def predict(self, rows: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray | None]:
        try:
            outputs = self.session.run(None, self.feed(rows))
        except Exception as exc:  # onnxruntime's own exception types; a row it refuses is a bad row
            raise ValueError(f"ONNX Runtime refused the rows: {exc}") from exc
        if self.labels is None:
            return [float(v) for v in np.asarray(outputs[0], dtype=np.float64).ravel()], None
        proba = np.asarray(outputs[1], dtype=np.float64)
        return [_plain(c) for c in self.labels.take(proba.argmax(axis=1))], proba


def choose(model: RegisteredModel, wanted: str, tolerance: float, cache: Path | None = None) -> Runtime:
    """The runtime `wanted` ("auto", "onnx", "sklearn") for this model; see the module's docstring. `cache`:
    where the ONNX conversion is kept for the next start (onnx_export.cached_session)."""
    if wanted == "sklearn":
        return SklearnRuntime(model)
    try:
        session = onnx_export.cached_session(model, cache)
        check = model.reference.head(2000)
        largest, rows = onnx_export.compare(model, session, check, tolerance)
    except (
        RuntimeError,
        ValueError,
    ) as exc:  # onnx_export.NotConvertible and NotEquivalent are RuntimeErrors
        if wanted == "onnx":
            raise RuntimeError(
                f"serving.runtime is 'onnx' but the model cannot be served with ONNX Runtime: {exc}. "
                "Set serving.runtime to 'auto' or 'sklearn'."
            ) from exc
        logger.warning("Serving with scikit-learn: the ONNX conversion is not usable (%s)", exc)
        return SklearnRuntime(model)
    logger.info(
        "Serving with ONNX Runtime: agrees with scikit-learn on %d reference rows (max diff %.2g)",
        rows,
        largest,
    )
    return OnnxRuntime(model, session)


def _plain(value: Any) -> Any:
    """numpy scalars to plain Python, so the response serializes the same for every estimator."""
    return value.item() if hasattr(value, "item") else value
