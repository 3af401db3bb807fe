"""The BentoML service: the production model behind a small, strict JSON API.

    POST /predict      {"rows": [{...}, ...]}  ->  {"predictions": [...], "probabilities": [...], ...}
    POST /predict_one  {"row": {...}}          ->  {"prediction": ..., "probabilities": {...}, ...}
    GET  /livez /readyz /metrics /docs.json     (never behind the API key)

Both answers also carry "model_version" and "request_id" (the X-Request-ID header).

Both prediction endpoints hand their rows to one batchable method, `predict_rows`, through BentoML's own
client for this service, so concurrent requests are predicted together (adaptive batching, bounded by
serving.max_batch_size and serving.max_latency_ms); it is internal and refuses outside callers.

The model is the production one (the alias record in aliases.py, set by promotion; a Bento built with
`--arg model_tag=<tag>` serves that tag), read when this module is imported, and the request schema is
built from the feature schema stored with it, so `bentoml serve` refuses to start, saying what to do, when
nothing has been promoted yet. /readyz answers 200 only once the model is loaded and the request log runs.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import aiohttp
import bentoml
import httpx
import numpy as np
import pandas as pd
from bentoml import server_context
from bentoml.exceptions import BentoMLException, InvalidArgument
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field

from .aliases import production_tag
from .config import PACKAGE, get_settings
from .data import conform
from .middleware import RequestGuard, self_call
from .requestlog import RequestLog, worker_path
from .schema import OnePrediction, Prediction, RowPrediction, row_model


class ServiceArguments(BaseModel):
    """BentoML template arguments (`bentoml build|serve --arg model_tag=<tag>`): a Bento pins its model so
    it serves the same one wherever it runs, even where the production alias record does not exist."""

    model_tag: str = ""


SETTINGS = get_settings()
SERVING = SETTINGS.serving
MODEL_TAG = bentoml.use_arguments(ServiceArguments).model_tag or production_tag(SETTINGS)
_MODEL_INFO = bentoml.models.get(MODEL_TAG)
FEATURE_SCHEMA: dict = _MODEL_INFO.info.metadata["feature_schema"]
TASK_TYPE: str = _MODEL_INFO.info.metadata["task_type"]
Features = row_model(FEATURE_SCHEMA)
# An empty list would reach scikit-learn and fail with a 500; a huge one would stall a worker.
Rows = Annotated[
    list[Features],  # type: ignore[valid-type]
    Field(
        min_length=1,
        max_length=SERVING.max_rows,
        description="Rows to predict, each with the training columns",
    ),
]
REGRESSION_LABEL = "value"
# BentoML 1.4.30+ renews its in-process client session every 100 calls or 5 minutes and closes the old one
# under calls still in flight (github.com/bentoml/BentoML/issues/5544, pull/5698): measured here, 300
# concurrent single-row requests got 120 answers of 500 and took 30 s instead of 4 s. The service turns the
# renewal off for its own client (`_batched`), and, should a call still fail with a connection error, sends
# it again (predicting has no side effects), up to this many times in all.
SELF_CALL_ATTEMPTS = 2
TRANSIENT: tuple[type[BaseException], ...] = (httpx.TransportError, aiohttp.ClientConnectionError)

# prometheus_client metrics, as BentoML documents for custom metrics: they appear on /metrics beside
# BentoML's own (request counts, latency, adaptive batch sizes), summed over workers.
PREDICTIONS = Counter(
    f"{PACKAGE}_predictions",
    "Rows predicted, by predicted label (regression: 'value') and model version",
    ["label", "model_version"],
)
MODEL_SERVED = Gauge(
    f"{PACKAGE}_model_info",
    "The model version this service serves (value 1)",
    ["model_name", "model_version"],
    multiprocess_mode="max",
)


@bentoml.service(
    name=SETTINGS.model_name.replace("_", "-") + "-service",
    workers=SERVING.workers,
    traffic={"timeout": SERVING.timeout_seconds},
)
class Predictor:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.pipeline = bentoml.sklearn.load_model(self.model)
        self.version = str(self.model.tag)
        self.classes = [str(c) for c in self.pipeline.classes_] if TASK_TYPE == "classification" else None
        self.requests = RequestLog(
            worker_path(SETTINGS.resolve(SERVING.request_log_path), server_context.worker_index),
            max_bytes=SERVING.request_log_max_bytes,
            backups=SERVING.request_log_backups,
            buffer=SERVING.request_log_buffer,
        )
        MODEL_SERVED.labels(model_name=self.model.tag.name, model_version=self.version).set(1)

    def __is_ready__(self) -> bool:
        """/readyz: the model is loaded and the request log can take records."""
        return self.pipeline is not None and self.requests.alive

    @bentoml.on_shutdown
    def close_request_log(self) -> None:
        self.requests.close()

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SERVING.max_batch_size,
        max_latency_ms=SERVING.max_latency_ms,
    )
    def predict_rows(self, rows: Rows) -> list[RowPrediction]:
        """Internal: the batching core behind /predict and /predict_one (outside callers get a 403)."""
        try:
            return self._predict(rows)
        except (ValueError, TypeError):
            # Rows of several requests are predicted together: one row the model refuses must not fail
            # the others, so each is tried alone and carries its own error back to its request (a 400).
            return [self._predict_alone(row) for row in rows]

    def _predict_alone(self, row: Any) -> RowPrediction:
        try:
            return self._predict([row])[0]
        except (ValueError, TypeError) as exc:
            return RowPrediction(error=f"the model cannot predict this row: {exc}")

    def _predict(self, rows: list[Any]) -> list[RowPrediction]:
        frame = conform(pd.DataFrame([row.model_dump() for row in rows]), FEATURE_SCHEMA)
        predictions = [_plain(p) for p in self.pipeline.predict(frame)]
        if self.classes is None:
            return [RowPrediction(prediction=p) for p in predictions]
        proba = np.asarray(self.pipeline.predict_proba(frame))
        return [
            RowPrediction(prediction=p, probabilities=dict(zip(self.classes, map(float, row), strict=True)))
            for p, row in zip(predictions, proba, strict=True)
        ]

    @bentoml.api
    async def predict(self, rows: Rows, ctx: bentoml.Context) -> Prediction:
        """Predict for one or more rows; each row's fields are the training columns."""
        request_id = _request_id(ctx)
        results = await self._batched(rows)
        self._record("/predict", request_id, rows, results)
        return Prediction(
            predictions=[r.prediction for r in results],
            probabilities=None if self.classes is None else [r.probabilities or {} for r in results],
            model_version=self.version,
            request_id=request_id,
        )

    @bentoml.api
    async def predict_one(self, row: Features, ctx: bentoml.Context) -> OnePrediction:  # type: ignore[valid-type]
        """Predict for one row; concurrent calls are batched together."""
        request_id = _request_id(ctx)
        [result] = await self._batched([row])
        self._record("/predict_one", request_id, [row], [result])
        return OnePrediction(
            prediction=result.prediction,
            probabilities=result.probabilities,
            model_version=self.version,
            request_id=request_id,
        )

    async def _batched(self, rows: list[Any]) -> list[RowPrediction]:
        """Call the batchable core through BentoML's client for this service (what batches requests)."""
        sessions = getattr(self.to_async, "_session_manager", None)  # see SELF_CALL_ATTEMPTS
        if sessions is not None and sessions.max_requests != math.inf:
            sessions.max_requests = sessions.max_age = math.inf
        for attempt in range(1, SELF_CALL_ATTEMPTS + 1):
            try:
                with self_call():  # outside a server, `to_async` calls the method directly
                    results = await self.to_async.predict_rows(rows=rows)
                break
            except TRANSIENT:
                if attempt == SELF_CALL_ATTEMPTS:
                    raise
            except BentoMLException as exc:
                # The rows passed the same validation here, so a 4xx from the core is unexpected; pass it
                # on as a 4xx with its own message rather than let it become a 500.
                if 400 <= exc.error_code < 500:
                    raise InvalidArgument(_error_text(str(exc))) from exc
                raise
        answers = [r if isinstance(r, RowPrediction) else RowPrediction.model_validate(r) for r in results]
        refused = [f"rows.{i}: {a.error}" for i, a in enumerate(answers) if a.error]
        if refused:
            raise InvalidArgument("; ".join(refused))
        return answers

    def _record(self, endpoint: str, request_id: str, rows: list[Any], results: list[RowPrediction]) -> None:
        """Count the predictions and hand them to the request log (never waits for the disk)."""
        now = datetime.now(UTC).isoformat()
        records = []
        for index, (row, result) in enumerate(zip(rows, results, strict=True)):
            label = REGRESSION_LABEL if self.classes is None else str(result.prediction)
            PREDICTIONS.labels(label=label, model_version=self.version).inc()
            records.append(
                {
                    "request_id": request_id,
                    "time": now,
                    "endpoint": endpoint,
                    "model_version": self.version,
                    "row": index,
                    "features": row.model_dump(),
                    "prediction": result.prediction,
                    "probabilities": result.probabilities,
                }
            )
        self.requests.submit(records)


def _request_id(ctx: bentoml.Context) -> str:
    """The id RequestGuard gave this request (a fresh one if the service runs without it)."""
    return getattr(ctx.request.state, "request_id", None) or uuid.uuid4().hex


def _error_text(body: str) -> str:
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body


def _plain(value):
    """numpy scalars to plain Python, so the response serializes the same for every estimator."""
    return value.item() if hasattr(value, "item") else value


def _api_routes(internal: bool) -> list[str]:
    return [method.route for name, method in Predictor.apis.items() if (name == "predict_rows") == internal]


# BentoML's documented hook for ASGI middleware. The API key stays in its environment variable.
Predictor.add_asgi_middleware(
    RequestGuard,
    protected=_api_routes(internal=False),
    internal=_api_routes(internal=True),
    api_key_env=SERVING.api_key_env,
)
