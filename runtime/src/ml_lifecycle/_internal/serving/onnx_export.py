"""ONNX export, for edge targets and the service's fast path: the production pipeline, preprocessing
included, as one ONNX model, checked first.

The ONNX model takes one input per feature column, named like the column, shaped [rows, 1]: float32 for
number columns (NaN for a missing value) and string for category columns ("" for a missing value). It
returns `label` and `probabilities` (classification, classes in the order of the `classes` metadata entry)
or `variable` (regression). The feature schema, the model tag and the classes travel in the model's
metadata_props.

Nothing is written unless ONNX Runtime gives the same answers as scikit-learn on real rows (the holdout when
the training data is unchanged, else the training sample stored with the model): the same labels and
probabilities within `onnx.tolerance`, or predictions within `onnx.tolerance` relative. A step with no ONNX
converter stops the export with its place in the pipeline and the reason.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import OneHotEncoder

from .. import tables
from ..atomic_write import write_atomically
from ..config import Settings
from ..registry import aliases, store

logger = logging.getLogger(__name__)

MISSING_TEXT = ""


class NotConvertible(RuntimeError):
    """The pipeline has a step that skl2onnx cannot turn into ONNX; the message names the step and why."""


class NotEquivalent(RuntimeError):
    """The ONNX model answers differently from scikit-learn; nothing was written."""


@dataclass(frozen=True)
class ExportResult:
    path: str
    tag: str
    task_type: str
    rows_checked: int
    checked_on: str
    max_difference: float
    tolerance: float
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MissingText(BaseEstimator, TransformerMixin):
    """Stands in for a fitted text SimpleImputer in the ONNX copy: "" (a missing value) becomes `fill`.

    Per column, `fill` is what the fitted imputer gives a missing value (None after tables.conform), so the
    ONNX graph (Equal + Where, which ONNX Runtime runs on strings, unlike its Imputer) does what scikit-learn
    does.
    """

    def __init__(self, fill: list[str] | None = None) -> None:
        self.fill = fill

    def fit(self, X, y=None):  # noqa: N803  (scikit-learn's argument names)
        return self

    def transform(self, X):  # noqa: N803
        values = np.asarray(X, dtype=object)
        return np.where(values == MISSING_TEXT, np.asarray(self.fill, dtype=object), values)


def _missing_text_shape(operator) -> None:
    from skl2onnx.common.data_types import StringTensorType

    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = StringTensorType([rows, len(operator.raw_operator.fill)])


def _missing_text_converter(scope, operator, container) -> None:
    from skl2onnx.algebra.onnx_ops import OnnxEqual, OnnxWhere

    version = container.target_opset
    values = operator.inputs[0]
    fill = np.array(operator.raw_operator.fill, dtype=object).reshape(1, -1)
    missing = OnnxEqual(values, np.array([MISSING_TEXT], dtype=object), op_version=version)
    result = OnnxWhere(missing, fill, values, op_version=version, output_names=operator.outputs[:1])
    result.add_to(scope, container)


_REGISTERED = False


def _register() -> None:
    """Teach skl2onnx MissingText, and work around one skl2onnx bug; idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common import tree_ensemble

    update_registered_converter(
        MissingText, "ProjectMissingText", _missing_text_shape, _missing_text_converter
    )
    # skl2onnx 1.20 passes Python booleans for HistGradientBoosting's missing-value routing; recent protobuf
    # refuses booleans in an integer list ("Expected an int, got a boolean"). Integers mean the same.
    original = tree_ensemble.add_node
    if not getattr(original, "_casts_missing_tracks", False):

        def add_node(*args, nodes_missing_value_tracks_true=0, **kwargs):
            return original(
                *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs
            )

        add_node._casts_missing_tracks = True  # type: ignore[attr-defined]
        tree_ensemble.add_node = add_node
    _REGISTERED = True


def steps(estimator: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf estimator of a nested pipeline with its place, e.g. `preprocess > categorical > onehot`."""
    children: list[tuple[str, Any]] = []
    if isinstance(estimator, Pipeline):
        children = list(estimator.steps)
    elif isinstance(estimator, ColumnTransformer):
        fitted = getattr(estimator, "transformers_", estimator.transformers)
        children = [(name, step) for name, step, _ in fitted]
    elif isinstance(estimator, FeatureUnion):
        children = list(estimator.transformer_list)
    if not children:
        yield path or type(estimator).__name__, estimator
        return
    for name, child in children:
        if isinstance(child, str):  # "drop" / "passthrough"
            continue
        yield from steps(child, f"{path} > {name}" if path else name)


def check_convertible(pipeline: Any) -> None:
    """Name the first step skl2onnx has no converter for, before trying a conversion."""
    import skl2onnx
    from skl2onnx._supported_operators import sklearn_operator_name_map

    _register()
    for place, step in steps(pipeline):
        if type(step) not in sklearn_operator_name_map:
            raise NotConvertible(
                f"step {place!r} ({type(step).__module__}.{type(step).__name__}) has no ONNX converter in "
                f"skl2onnx {skl2onnx.__version__}; replace it in features.py or model.py with a supported "
                "step, or register a converter (skl2onnx.update_registered_converter)"
            )


def onnx_ready(pipeline: Any) -> Any:
    """A copy of the fitted pipeline whose text handling ONNX Runtime can run; the original is untouched.

    Missing text arrives in ONNX as "", never None: text imputers become MissingText (same fill per column as
    the fitted imputer gives a missing value) and a one-hot category None (or NaN) becomes "".
    """
    ready = copy.deepcopy(pipeline)
    for _, parent in _containers(ready):
        for index, (name, step) in enumerate(parent.steps):
            if isinstance(step, SimpleImputer) and _is_text(step):
                parent.steps[index] = (name, MissingText(_fill_for_none(step)))
    for place, step in steps(ready):
        if isinstance(step, OneHotEncoder):
            for index, categories in enumerate(step.categories_):
                if categories.dtype == object:
                    if MISSING_TEXT in set(categories):
                        raise NotConvertible(
                            f"step {place!r}: the empty string is a category, but ONNX input uses it for a "
                            "missing value"
                        )
                    step.categories_[index] = np.array(
                        [MISSING_TEXT if v is None or v != v else v for v in categories], dtype=object
                    )
    return ready


def _containers(estimator: Any) -> Iterator[tuple[str, Pipeline]]:
    if isinstance(estimator, Pipeline):
        yield "", estimator
        for _, step in estimator.steps:
            yield from _containers(step)
    elif isinstance(estimator, ColumnTransformer):
        for _, step, _ in getattr(estimator, "transformers_", estimator.transformers):
            yield from _containers(step)


def _is_text(imputer: SimpleImputer) -> bool:
    return getattr(imputer, "statistics_", np.array([])).dtype == object


def _fill_for_none(imputer: SimpleImputer) -> list[str]:
    """What the fitted imputer makes of a missing value, as tables.conform hands it over, in each column: its
    statistic, or "" when it leaves the value alone (the one-hot step's category for it is spelt "" too)."""
    missing = tables.conform(pd.DataFrame({"c": [None]}), {"c": {"kind": "category"}})["c"].iloc[0]
    row = [[missing] * len(imputer.statistics_)]
    names = getattr(imputer, "feature_names_in_", None)
    out = imputer.transform(
        pd.DataFrame(row, columns=names) if names is not None else np.array(row, dtype=object)
    )
    return [MISSING_TEXT if v is None or v != v else str(v) for v in np.asarray(out, dtype=object)[0]]


def input_types(schema: dict[str, dict[str, Any]]) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [
        (column, FloatTensorType([None, 1]) if spec["kind"] == "number" else StringTensorType([None, 1]))
        for column, spec in schema.items()
    ]


def feed(frame: pd.DataFrame, schema: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows as ONNX inputs: one [rows, 1] array per column; NaN and "" for missing values."""
    features = tables.conform(frame, schema)
    arrays = {}
    for column, spec in schema.items():
        values = features[column]
        if spec["kind"] == "number":
            arrays[column] = values.to_numpy(dtype=np.float32).reshape(-1, 1)
        else:
            text = values.map(lambda v: MISSING_TEXT if pd.isna(v) else str(v))
            arrays[column] = text.to_numpy(dtype=object).reshape(-1, 1)
    return arrays


def convert(model: store.RegisteredModel) -> Any:
    """The registered pipeline as an onnx.ModelProto, with the schema and tag in its metadata."""
    from skl2onnx import convert_sklearn

    pipeline, task_type = model.pipeline, model.metadata["task_type"]
    check_convertible(pipeline)
    ready = onnx_ready(pipeline)
    options = {id(ready.steps[-1][1]): {"zipmap": False}} if task_type == "classification" else None
    try:
        onx = convert_sklearn(ready, initial_types=input_types(model.schema), options=options)
    except Exception as exc:  # skl2onnx raises many types; the message is what the user needs
        last = ready.steps[-1][0] if isinstance(ready, Pipeline) else type(ready).__name__
        raise NotConvertible(
            f"skl2onnx could not convert the pipeline (steps: {[p for p, _ in steps(pipeline)]}, "
            f"estimator step {last!r}): {type(exc).__name__}: {str(exc)[:500]}"
        ) from exc
    meta = {
        "model_tag": model.tag,
        "task_type": task_type,
        "feature_schema": json.dumps(model.schema),
        "missing_text": MISSING_TEXT,
    }
    if task_type == "classification":
        meta["classes"] = json.dumps([_plain(c) for c in pipeline.classes_])
    for key, value in meta.items():
        onx.metadata_props.add(key=key, value=value)
    return onx


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def session(onx: Any):
    return session_of(onx.SerializeToString())


def session_of(serialized: bytes):
    # ONNX Runtime's telemetry otherwise writes a device id and an event database under ~/.cache/Microsoft
    # the first time a session is made: the project writes nothing in the user's home. Set it to 0 to allow.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])


def cached_session(model: store.RegisteredModel, cache: Path | None) -> Any:
    """A session for `model` from `cache`, the ONNX file an earlier start converted for the same tag, else
    converted now and kept there. Importing skl2onnx costs most of a worker's start
    (docs/decisions.md#service-start-up); the caller still checks the session against scikit-learn."""
    if cache is not None and cache.is_file():
        try:
            found = session_of(cache.read_bytes())
            if found.get_modelmeta().custom_metadata_map.get("model_tag") == model.tag:
                return found
            logger.warning("%s was converted for another model: converting %s again", cache, model.tag)
        except Exception as exc:  # onnxruntime's own exception types: a torn or foreign file
            logger.warning("Cannot load %s (%s): converting %s again", cache, exc, model.tag)
    onx = convert(model)
    if cache is not None:
        try:
            write_atomically(cache, lambda sink: sink.write(onx.SerializeToString()))
        except OSError as exc:  # a read-only model store: every start converts, nothing else changes
            logger.warning("Cannot keep the ONNX conversion in %s (%s)", cache, exc)
    return session(onx)


def compare(
    model: store.RegisteredModel, sess: Any, frame: pd.DataFrame, tolerance: float
) -> tuple[float, int]:
    """ONNX Runtime against scikit-learn on the same rows; returns (largest difference, rows), raises
    NotEquivalent naming the first row that differs."""
    task_type, schema, pipeline = model.metadata["task_type"], model.schema, model.pipeline
    features = tables.conform(frame, schema)
    outputs = sess.run(None, feed(frame, schema))
    if task_type == "classification":
        labels, proba = np.asarray(outputs[0]).ravel(), np.asarray(outputs[1])
        expected_labels, expected_proba = pipeline.predict(features), pipeline.predict_proba(features)
        diff = np.abs(proba - expected_proba).max(axis=1)
        wrong = np.flatnonzero((labels != expected_labels) | (diff > tolerance))
        if len(wrong):
            row = int(wrong[0])
            raise NotEquivalent(
                f"ONNX Runtime differs from scikit-learn on {len(wrong)} of {len(frame)} rows; first, row "
                f"{row}: label {labels[row]!r} vs {expected_labels[row]!r}, probabilities "
                f"{proba[row].round(6).tolist()} vs {np.round(expected_proba[row], 6).tolist()} "
                f"(tolerance {tolerance})"
            )
        return float(diff.max()), len(frame)
    predicted = np.asarray(outputs[0], dtype=np.float64).ravel()
    expected = np.asarray(pipeline.predict(features), dtype=np.float64)
    # Relative to the prediction, or to the typical prediction size when a prediction is near zero.
    scale = np.maximum(np.abs(expected), np.abs(expected).mean() or 1.0)
    relative = np.abs(predicted - expected) / scale
    wrong = np.flatnonzero(relative > tolerance)
    if len(wrong):
        row = int(wrong[0])
        raise NotEquivalent(
            f"ONNX Runtime differs from scikit-learn on {len(wrong)} of {len(frame)} rows; first, row {row}: "
            f"{predicted[row]!r} vs {expected[row]!r} (relative tolerance {tolerance})"
        )
    return float(relative.max()), len(frame)


def check_rows(settings: Settings, model: store.RegisteredModel) -> tuple[pd.DataFrame, str]:
    """The holdout when the training data is the model's own (same hash), else its stored training sample."""
    from ..training import holdout, validation  # the training stack, only when exporting: never at serve

    limit = settings.onnx.check_rows
    try:
        dataset = validation.load_dataset(settings)
    except tables.DataError:
        dataset = None
    if dataset is not None and tables.data_hash(dataset.frame) == model.metadata.get("data_hash"):
        rows = holdout.split(dataset, settings).test_x
        label = "holdout"
    else:
        rows, label = model.reference, "training sample stored with the model"
    if len(rows) > limit:
        rows = rows.sample(limit, random_state=settings.data.seed)
    return rows.reset_index(drop=True), label


def default_path(settings: Settings, tag: str) -> Path:
    return settings.resolve(settings.onnx.output_dir) / f"{tag.replace(':', '-')}.onnx"


def export(settings: Settings, tag: str | None = None, output: str | Path | None = None) -> ExportResult:
    """Convert the production model (or `tag`), check it on real rows, then write it atomically."""
    model = store.load(tag or aliases.production_tag(settings), settings)
    onx = convert(model)
    rows, label = check_rows(settings, model)
    largest, count = compare(model, session(onx), rows, settings.onnx.tolerance)
    path = settings.resolve(output) if output else default_path(settings, model.tag)
    payload = onx.SerializeToString()
    write_atomically(path, lambda sink: sink.write(payload))
    return ExportResult(
        path=str(path),
        tag=model.tag,
        task_type=model.metadata["task_type"],
        rows_checked=count,
        checked_on=label,
        max_difference=largest,
        tolerance=settings.onnx.tolerance,
        size_bytes=len(payload),
    )
