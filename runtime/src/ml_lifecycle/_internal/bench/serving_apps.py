"""The two comparison servers of `bench --compare` (serving.py beside this module); not the project's service.

- `Trivial` (`bentoml serve ml_lifecycle._internal.bench.serving_apps:Trivial`): a BentoML service with the
  service's worker count and the same POST /predict_one request and answer types, whose endpoint returns a
  constant answer without touching the model: BentoML's own ceiling on this machine, with its defaults.
- `TrivialUntraced`: the same with the tracing setting of the project's service (`untraced_routes`): the
  ceiling for the service's configuration, so the gap to it is what the service's own layers cost.
- `fastapi_app` (`uvicorn --factory ml_lifecycle._internal.bench.serving_apps:fastapi_app --workers N`): a
  plain FastAPI app holding the production pipeline, predicting each request on its own (no batching).

Both read the project's settings, production alias and feature schema as the service does. The project is
the package named by ML_LIFECYCLE_BENCH_PACKAGE (set by the bench): importing it binds the library.
"""

import os
from importlib import import_module

import_module(os.environ["ML_LIFECYCLE_BENCH_PACKAGE"])

import bentoml  # noqa: E402
import pandas as pd  # noqa: E402
from pydantic import create_model  # noqa: E402

from .. import tables as data  # noqa: E402
from ..config import get_settings  # noqa: E402
from ..registry import aliases  # noqa: E402
from ..serving import request_schema as schema  # noqa: E402
from ..serving.service import untraced_routes  # noqa: E402

SETTINGS = get_settings()
MODEL = bentoml.models.get(aliases.production_tag(SETTINGS))
FEATURE_SCHEMA = MODEL.info.metadata["feature_schema"]
CLASSIFICATION = MODEL.info.metadata["task_type"] == "classification"
Features = schema.row_model(FEATURE_SCHEMA)
Body = create_model("Body", row=(Features, ...))
CONSTANT = schema.OnePrediction(
    prediction=0,
    probabilities={"0": 1.0} if CLASSIFICATION else None,
    model_version="trivial",
    request_id="trivial",
)


def trivial(name: str, **config: object) -> type:
    """A BentoML service whose POST /predict_one answers CONSTANT; `config` is added to its settings."""

    class Trivial:
        @bentoml.api
        async def predict_one(self, row: Features) -> schema.OnePrediction:  # type: ignore[valid-type]
            return CONSTANT

    Trivial.__qualname__ = Trivial.__name__ = name.title().replace("-", "")
    return bentoml.service(
        name=name,
        workers=SETTINGS.serving.workers,
        traffic={"timeout": SETTINGS.serving.timeout_seconds},
        **config,
    )(Trivial)


# BentoML's defaults: its own ceiling. And the same with the tracing setting the project's service uses,
# so that the difference between it and the service is what the service's own layers cost.
Trivial = trivial("serving-benchmark-trivial")
TrivialUntraced = trivial("serving-benchmark-trivial-untraced", tracing=untraced_routes())


def fastapi_app():
    """The production pipeline behind POST /predict_one, one `predict_proba` (or `predict`) per request."""
    from fastapi import FastAPI

    pipeline = bentoml.sklearn.load_model(MODEL)
    classes = [str(c) for c in pipeline.classes_] if CLASSIFICATION else None
    version = str(MODEL.tag)
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post("/predict_one")
    def predict_one(body: Body) -> schema.OnePrediction:  # type: ignore[valid-type]
        frame = data.conform(pd.DataFrame([body.row.model_dump()]), FEATURE_SCHEMA)
        if classes is None:
            prediction, probabilities = pipeline.predict(frame)[0].item(), None
        else:
            proba = [float(p) for p in pipeline.predict_proba(frame)[0]]
            prediction = pipeline.classes_[proba.index(max(proba))]
            prediction = prediction.item() if hasattr(prediction, "item") else prediction
            probabilities = dict(zip(classes, proba, strict=True))
        return schema.OnePrediction(
            prediction=prediction,
            probabilities=probabilities,
            model_version=version,
            request_id=os.urandom(16).hex(),
        )

    return app
