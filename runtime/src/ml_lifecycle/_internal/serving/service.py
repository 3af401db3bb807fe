"""The BentoML service: the production model behind a small, strict JSON API.

    POST /predict      {"rows": [{...}, ...]}  ->  {"predictions": [...], "probabilities": [...], ...}
    POST /predict_one  {"row": {...}}          ->  {"prediction": ..., "probabilities": {...}, ...}
    GET  /model        the served model's card (registry/card.py) as JSON, behind the API key like the two
                       above; 404 for a model without one
    GET  /livez /readyz /metrics /docs.json /schema.json     (never behind the API key)

Both answers also carry "model_version" and "request_id" (the X-Request-ID header).

Both prediction endpoints hand their rows to one adaptive batcher in the worker (batching.py, BentoML's
own dispatcher), so concurrent requests are predicted together, bounded by serving.max_batch_size and
serving.max_latency_ms: a request whose wait at the batcher would pass it is answered 503 (load shed). Time
spent before the batcher (accept queue, HTTP, JSON) is not counted (docs/decisions.md#overload).

The model is the production one (the alias record in registry/aliases.py, set by promotion; a Bento built with
`--arg model_tag=<tag>` serves that tag), and the request schema is built from the feature schema stored with
it, so `bentoml serve` refuses to start, saying what to do, when nothing has been promoted yet. Both are read
when `Predictor` is first asked for (`bentoml serve|build` asks at start-up), never when this module is
imported: build() makes the service once per process. /readyz answers 200 only once the model is loaded and
the request log can be written (a 503 names the file and the cause).

Rollout without a restart (docs/serving.md#rollout-how-a-promoted-model-reaches-the-service): each worker
checks the alias record every rollout.poll_seconds in a thread of its own, loads a newly promoted (or
rolled back to) model there, off the request path, and swaps it in as one object between batches; a batch
is predicted by one model, and every answer and request-log record names the version that predicted it.
A model whose feature columns differ from the ones the API was built for is not swapped in (a restart
serves it). A pinned Bento (`--arg model_tag`) never swaps.
"""

import gc
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, cast

import bentoml
from bentoml import server_context
from bentoml._internal.server.http import instruments
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ..config import PACKAGE, Settings, get_settings
from ..records import RequestRecord
from ..registry import aliases, card
from ..registry.store import RegisteredModel, ensure_local, load
from ..storage import StorageError
from . import predictors
from .batching import Batcher
from .http_guard import (
    RequestGuard,
    api_key_from,
    bounded_endpoint_label,
    key_env,
    key_from_secret_block,
)
from .production_poll import ProductionPoll
from .rejected_requests import install as keep_rejected_values_out_of_the_log
from .request_deadline import install as install_header_deadline
from .request_log import RequestLog
from .request_schema import OnePrediction, Prediction, RowPrediction, row_model

# No `from __future__ import annotations` here: the endpoints are defined inside build(), and BentoML reads
# their annotations (the request types built from the model's schema) from the function, not its module.

logger = logging.getLogger(__name__)


class ServiceArguments(BaseModel):
    """BentoML template arguments (`bentoml build|serve --arg model_tag=<tag>`): a Bento pins its model so
    it serves the same one wherever it runs, even where the production alias record does not exist."""

    model_tag: str = ""


REGRESSION_LABEL = "value"
# prometheus_client metrics, as BentoML documents for custom metrics: they appear on /metrics beside
# BentoML's own (request counts, latency, adaptive batch sizes), summed over workers.
PREDICTIONS = Counter(
    f"{PACKAGE}_predictions",
    "Rows predicted, by predicted label (regression: 'value') and model version",
    ["label", "model_version"],
)
MODEL_SERVED = Gauge(
    f"{PACKAGE}_model_info",
    "The model version this service serves (1; 0 once swapped out)",
    ["model_name", "model_version", "runtime"],
    multiprocess_mode="max",
)
# Per model version, so the watch after a rollout (monitoring/rollout_watch.py) compares the new model with
# the one it replaced on the same service: outcome is ok, refused (400), shed (503) or error (500).
REQUESTS = Counter(
    f"{PACKAGE}_prediction_requests",
    "Prediction requests by the model version that answered them and outcome",
    ["model_version", "outcome"],
)
LATENCY = Histogram(
    f"{PACKAGE}_prediction_latency_seconds",
    "Time from the endpoint receiving a valid request to its answer, by model version",
    ["model_version"],
)
SWAP_REFUSED = Gauge(
    f"{PACKAGE}_model_swap_refused",
    "1 while the production model cannot be swapped in (its feature columns differ): restart the service",
    ["model_version"],
    multiprocess_mode="max",
)
BATCH_SIZE = Histogram(
    f"{PACKAGE}_batch_size",
    "Rows predicted together by the adaptive batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)


# The served model's card: a route of a small FastAPI app mounted on the service (model_card_app).
MODEL_ROUTE = "/model"
# BentoML's own routes; every other path is one `endpoint` label on BentoML's HTTP metrics.
BENTOML_ROUTES = ["/", "/docs.json", "/schema.json", "/metrics", "/livez", "/healthz", "/readyz"]
PREDICTION_ROUTES = ["/predict", "/predict_one"]  # the two endpoints build() defines (their method names)


def untraced_routes() -> dict[str, Any]:
    """The service's `tracing` setting: the prediction routes left out of BentoML's OpenTelemetry middleware
    while no trace exporter is configured. Without one (BentoML's default) a span can never leave the
    process, yet building and dropping the spans of each request cost more CPU than the rest of the service
    (docs/decisions.md#what-a-request-costs). With `tracing.exporter_type` set in BentoML's configuration,
    every route is traced as BentoML does."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    if BentoMLContainer.tracing.exporter_type.get():
        return {}
    return {"excluded_urls": [re.escape(route) + r"(\?|$)" for route in PREDICTION_ROUTES]}


def freeze_long_lived() -> None:
    """Collect, then freeze what is left. The libraries, the model and its reference rows are a few hundred
    thousand objects that live as long as the worker; frozen, the garbage collector stops walking them again
    and again while requests allocate (docs/decisions.md#what-a-request-costs). Unfrozen first, so a swap's
    replaced model, frozen with the worker's start, is collected too."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Startup:
    """What the service starts from, read once by build(): the settings and the model to serve."""

    settings: Settings
    pinned_tag: str  # `--arg model_tag`; empty: the production model, followed as it changes
    model_tag: str
    feature_schema: dict[str, dict[str, Any]]

    @classmethod
    def read(cls) -> "Startup":
        """A clear error (LookupError) when no model is pinned and none has been promoted yet."""
        settings = get_settings()
        pinned = bentoml.use_arguments(ServiceArguments).model_tag
        # Imported from the project's store when this machine has not seen it (trained elsewhere).
        tag = ensure_local(settings, pinned or aliases.production_tag(settings))
        metadata: dict[str, Any] = dict(bentoml.models.get(tag).info.metadata)
        return cls(settings, pinned, tag, metadata["feature_schema"])


class Serving:
    """What the service does, apart from its two endpoints: build() subclasses it with those, whose request
    types come from the model's feature schema, and makes the subclass the BentoML service."""

    startup: ClassVar[Startup]
    model: ClassVar[Any]  # bentoml.models.BentoModel of startup.model_tag, which BentoML resolves

    def __init__(self) -> None:
        settings = self.startup.settings
        serving = settings.serving
        self.served = Served.of(load(str(self.model.tag)), settings)
        self.requests = RequestLog.of(settings, server_context.worker_index)
        self.served.announce(1)
        self.batcher = Batcher(
            self.predict_rows,
            max_batch_size=serving.max_batch_size,
            max_latency_ms=serving.max_latency_ms,
            on_batch=BATCH_SIZE.observe,
        )
        self._stop = threading.Event()
        if not self.startup.pinned_tag and settings.rollout.poll_seconds > 0:
            threading.Thread(target=self._follow_production, name="rollout", daemon=True).start()
        freeze_long_lived()

    def __is_ready__(self) -> bool:
        """/readyz: the model is loaded and the request log's writer runs (a failing store costs no
        readiness: its records wait and are counted). BentoML answers False with a bare 503; the
        HTTPException raised instead (BentoML calls this inside its Starlette route, which turns it into
        the answer) tells the prober why."""
        problem = self.requests.problem()
        if problem is not None:
            raise HTTPException(503, detail=f"not ready: {problem}")
        return self.served.runtime is not None

    @bentoml.on_shutdown
    def close_request_log(self) -> None:
        self._stop.set()
        self.requests.close()

    def _follow_production(self) -> None:
        """Swap in the production model whenever the alias record names another one; never raises, since a
        dead thread would leave the worker serving an old model silently."""
        refused: set[str] = set()
        poll = ProductionPoll(self.startup.settings)
        while not self._stop.wait(self.startup.settings.rollout.poll_seconds):
            try:
                tag = poll.next_tag(self.served.version)
                if tag and tag not in refused:
                    self._swap_to(tag, refused)
                    poll.failed(None, self.served.version)
            except Exception as exc:  # the next poll tries again; the current model keeps serving
                poll.failed(
                    f"Could not swap in the production model ({type(exc).__name__}: {exc}); "
                    f"still serving {self.served.version}"
                )

    def _swap_to(self, tag: str, refused: set[str]) -> None:
        # Here, not at the top: the promotion module brings the training metrics (scikit-learn's metrics,
        # SciPy), which a worker needs only when production changes (docs/decisions.md#service-start-up).
        from ..registry.promotion import schema_changes

        model = load(tag, self.startup.settings)  # once: its schema is checked and the same object is served
        changes = schema_changes(model.schema, self.startup.feature_schema)
        if changes:
            refused.add(tag)
            SWAP_REFUSED.labels(model_version=tag).set(1)
            logger.error(
                "Production is now %s, whose feature columns differ from the API's (%s): still serving %s; "
                "restart the service to serve it",
                tag,
                "; ".join(changes),
                self.served.version,
            )
            return
        new, old = Served.of(model, self.startup.settings), self.served
        self.served = new  # one assignment: a batch sees the old model or the new one, never a mix
        new.announce(1)
        old.announce(0)
        logger.info("Swapped in production model %s (was %s)", tag, old.version)
        del old
        freeze_long_lived()  # the old model was frozen with it: its reference cycles are collected now

    def predict_rows(self, rows: list[dict[str, Any]]) -> list[RowPrediction]:
        """The batching core behind /predict and /predict_one: rows of concurrent requests together."""
        try:
            return self.served.predict(rows)
        except (ValueError, TypeError):
            # Rows of several requests are predicted together: one row the model refuses must not fail
            # the others, so each is tried alone and carries its own error back to its request (a 400).
            return [self._predict_alone(row) for row in rows]

    def card_answer(self) -> Response:
        """GET /model: the card of the model this worker serves now (after a swap, the new one's), read from
        the store each time, so the gate's verdicts added since show; 404 for a model registered before
        cards."""
        version = self.served.version
        try:
            found = card.load(self.startup.settings, version)
        except StorageError as exc:  # unreachable store, or an object there that is not a card
            return JSONResponse({"error": str(exc), "model_version": version}, status_code=503)
        if found is None:
            return JSONResponse(
                {
                    "error": f"model {version} has no model card: it was registered before model cards "
                    f"(train again to get one), or its card ({card.key(version)} in storage.url) was deleted",
                    "model_version": version,
                },
                status_code=404,
            )
        # The card's own JSON: a metric that could not be computed is null (JSONResponse refuses NaN).
        return Response(found.to_json(), media_type="application/json")

    def _predict_alone(self, row: dict[str, Any]) -> RowPrediction:
        served = self.served
        try:
            return served.predict([row])[0]
        except (ValueError, TypeError) as exc:
            return RowPrediction(
                error=f"the model cannot predict this row: {exc}", model_version=served.version
            )

    async def answer(self, rows: list[BaseModel], ctx: bentoml.Context) -> Prediction:
        """/predict's answer (the endpoint is defined in build(), typed by the model's schema)."""
        request_id = _request_id(ctx)
        features = [row.model_dump() for row in rows]
        results = await self._batched(features)
        self._record("/predict", request_id, features, results)
        return Prediction(
            predictions=[r.value() for r in results],
            probabilities=None
            if results[0].probabilities is None
            else [r.probabilities or {} for r in results],
            model_version=results[0].model_version,
            request_id=request_id,
        )

    async def answer_one(self, row: BaseModel, ctx: bentoml.Context) -> OnePrediction:
        """/predict_one's answer (the endpoint is defined in build(), typed by the model's schema)."""
        request_id = _request_id(ctx)
        features = row.model_dump()
        [result] = await self._batched([features])
        self._record("/predict_one", request_id, [features], [result])
        return OnePrediction(
            prediction=result.value(),
            probabilities=result.probabilities,
            model_version=result.model_version,
            request_id=request_id,
        )

    async def _batched(self, rows: list[dict[str, Any]]) -> list[RowPrediction]:
        """Predict `rows` with those of concurrent requests; a row the model refused is a 400. Counted and
        timed per model version, whatever the outcome."""
        started, version, outcome = time.perf_counter(), self.served.version, "error"
        try:
            answers = await self.batcher(rows)
            version = answers[0].model_version or version
            refused = [f"rows.{i}: {a.error}" for i, a in enumerate(answers) if a.error]
            if refused:
                outcome = "refused"
                raise InvalidArgument("; ".join(refused))
            outcome = "ok"
            return answers
        except ServiceUnavailable:
            outcome = "shed"
            raise
        finally:
            REQUESTS.labels(model_version=version, outcome=outcome).inc()
            LATENCY.labels(model_version=version).observe(time.perf_counter() - started)

    def _record(
        self, endpoint: str, request_id: str, rows: list[dict[str, Any]], results: list[RowPrediction]
    ) -> None:
        """Count the predictions and hand them to the request log (never waits for the disk)."""
        now = datetime.now(UTC)
        records = []
        for index, (row, result) in enumerate(zip(rows, results, strict=True)):
            label = REGRESSION_LABEL if result.probabilities is None else str(result.prediction)
            PREDICTIONS.labels(label=label, model_version=result.model_version).inc()
            records.append(
                RequestRecord.model_construct(  # fields already validated: the request's, the model's
                    request_id=request_id,
                    time=now,
                    endpoint=endpoint,
                    model_version=result.model_version,
                    row=index,
                    features=row,
                    prediction=result.prediction,
                    probabilities=result.probabilities,
                )
            )
        self.requests.submit(records)


@dataclass(frozen=True)
class Served:
    """One model as a worker serves it; replaced whole by a swap, never changed in place."""

    version: str
    name: str
    runtime: predictors.Runtime

    @classmethod
    def of(cls, model: RegisteredModel, settings: Settings) -> "Served":
        # Kept in the model's own folder of the store, so it goes when the model does (registry retention).
        cache = Path(bentoml.models.get(model.tag).path) / "onnx" / "pipeline.onnx"
        runtime = predictors.choose(model, settings.serving.runtime, settings.onnx.tolerance, cache)
        return cls(version=model.tag, name=model.tag.split(":")[0], runtime=runtime)

    def announce(self, value: int) -> None:
        MODEL_SERVED.labels(model_name=self.name, model_version=self.version, runtime=self.runtime.name).set(
            value
        )

    def predict(self, rows: list[dict[str, Any]]) -> list[RowPrediction]:
        predictions, proba = self.runtime.predict(rows)
        classes = self.runtime.classes
        # Built without validation (model_construct): the values come from the model, not from a client.
        if proba is None or classes is None:
            version = self.version
            return [RowPrediction.model_construct(prediction=p, model_version=version) for p in predictions]
        return [
            RowPrediction.model_construct(
                prediction=p,
                probabilities=dict(zip(classes, map(float, row), strict=True)),
                model_version=self.version,
            )
            for p, row in zip(predictions, proba, strict=True)
        ]


def model_card() -> Response:
    """The served model's card (see docs/training.md#the-model-card): the model this worker answers with
    now, its data sources, search space and parameters, metrics, feature importance, the gate's verdicts
    and the library versions."""
    serving: Serving = bentoml.get_current_service()  # this worker's instance
    return serving.card_answer()


def model_card_app() -> FastAPI:
    """GET /model as a FastAPI app to mount on the service: BentoML's APIs are POST only, and a mounted
    FastAPI app's routes appear in the service's /docs.json. A plain function, so FastAPI runs it in its
    thread pool: reading the card from the store never blocks the event loop."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # the service's own documents only
    app.add_api_route(
        MODEL_ROUTE,
        model_card,
        methods=["GET"],
        summary="The served model's card",
        response_class=Response,
        responses={
            200: {"model": card.ModelCard, "description": "The card of the model that answers predictions"},
            404: {"description": "The served model has no card (registered before model cards)"},
        },
    )
    return app


def _request_id(ctx: bentoml.Context) -> str:
    """The id RequestGuard gave this request (a fresh one if the service runs without it)."""
    return getattr(ctx.request.state, "request_id", None) or uuid.uuid4().hex


@cache
def build() -> "bentoml.Service[Serving]":
    """The BentoML service, made once per process when `Predictor` is first asked for: BentoML's typed API
    needs the model's feature schema, which is read here, with the settings, and not at import. Building
    also applies the service's process-wide changes (middleware, log levels, BentoML's patches), once."""
    startup = Startup.read()
    settings = startup.settings
    serving = settings.serving
    if TYPE_CHECKING:  # built from the model's schema; to a type checker, some pydantic model
        Features = BaseModel
    else:
        Features = row_model(startup.feature_schema)
    # An empty list would reach scikit-learn and fail with a 500; a huge one would stall a worker.
    Rows = Annotated[
        list[Features],
        Field(
            min_length=1,
            max_length=serving.max_rows,
            description="Rows to predict, each with the training columns",
        ),
    ]

    class Predictor(Serving):
        model = bentoml.models.BentoModel(startup.model_tag)

        @bentoml.api
        async def predict(self, rows: Rows, ctx: bentoml.Context) -> Prediction:
            """Predict for one or more rows; each row's fields are the training columns."""
            return await self.answer(rows, ctx)

        @bentoml.api
        async def predict_one(self, row: Features, ctx: bentoml.Context) -> OnePrediction:
            """Predict for one row; concurrent calls are batched together."""
            return await self.answer_one(row, ctx)

    Predictor.startup = startup
    # @bentoml.service returns a bentoml.Service; mypy does not apply class decorators' return types.
    service = cast(
        "bentoml.Service[Serving]",
        bentoml.service(
            name=settings.model_name.replace("_", "-") + "-service",
            workers=serving.workers,
            traffic={"timeout": serving.timeout_seconds},
            tracing=untraced_routes(),
        )(Predictor),
    )

    # BentoML sets the root logger to WARNING in its server processes; the library's INFO lines (the API key
    # on or off, the runtime chosen) and the project's own belong in the server's log too.
    for name in ("ml_lifecycle", PACKAGE):
        logging.getLogger(name).setLevel(logging.INFO)

    # BentoML's documented hook for ASGI middleware. The API key stays in its environment variable.
    api_key = key_env(serving.api_key_env, serving.api_key_block, PACKAGE)
    if serving.api_key_block:
        key_from_secret_block(serving.api_key_block, api_key)
    api_key_from(api_key)  # a blank key stops `bentoml serve` here, before any worker starts
    service.mount_asgi_app(model_card_app(), name="model")
    routes = [method.route for method in service.apis.values()] + [MODEL_ROUTE]
    service.add_asgi_middleware(
        RequestGuard,
        protected=routes,
        api_key_env=api_key,
        max_body_bytes=serving.max_body_bytes,
        max_discarded_bytes=serving.max_discarded_bytes,
        discard_seconds=serving.timeout_seconds,
    )
    # BentoML builds its middleware from this module attribute when a worker starts, after it asked for the
    # service (and so after this patch).
    instruments.RunnerTrafficMetricsMiddleware = bounded_endpoint_label(  # type: ignore[misc, assignment]
        instruments.RunnerTrafficMetricsMiddleware, routes + BENTOML_ROUTES
    )
    # Each worker asks for the service before its uvicorn server loads its HTTP protocol class.
    install_header_deadline(serving.header_timeout_seconds)
    keep_rejected_values_out_of_the_log(log_values=serving.log_rejected_values)
    return service


def __getattr__(name: str) -> Any:
    """`Predictor` is built when first asked for (`bentoml serve <package>.service:Predictor` asks at
    start-up), so importing this module reads neither the settings nor the model store."""
    if name == "Predictor":
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
