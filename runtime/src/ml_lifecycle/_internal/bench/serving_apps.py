"""The two comparison servers of benchmarks/serving.py; not part of the project's service.

- `Trivial` (`bentoml serve serving_apps:Trivial`): a BentoML service with the service's worker count and
  the same POST /predict_one request and answer types, whose endpoint returns a constant answer without
  touching the model: BentoML's own ceiling on this machine.
- `fastapi_app` (`uvicorn --factory serving_apps:fastapi_app --workers N`): a plain FastAPI app holding the
  production pipeline, predicting each request on its own (no batching).

Both read the project's settings, production alias and feature schema as the service does.
"""

import importlib
import os
import tomllib
from pathlib import Path

import bentoml
import pandas as pd
from pydantic import create_model

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = tomllib.loads((ROOT / "settings.toml").read_text())["project"]["package"]
config, aliases, data, schema = (
    importlib.import_module(f"{PACKAGE}.{name}")
    for name in ("config", "registry.aliases", "tables", "serving.request_schema")
)

SETTINGS = config.get_settings()
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


@bentoml.service(
    name="serving-benchmark-trivial",
    workers=SETTINGS.serving.workers,
    traffic={"timeout": SETTINGS.serving.timeout_seconds},
)
class Trivial:
    @bentoml.api
    async def predict_one(self, row: Features) -> schema.OnePrediction:  # type: ignore[valid-type]
        return CONSTANT


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
