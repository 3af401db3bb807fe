"""GET /model as the built service has it: a route of its own beside the two prediction APIs, listed in the
OpenAPI document the service publishes (/docs.json), and guarded by the API key like them. Built in a fresh
interpreter, as `bentoml serve` builds it (building changes process-wide state); answered for real in
tests/test_service.py and tests/test_hot_swap.py."""

import json

from ml_lifecycle._internal.project import bound
from ml_lifecycle._internal.serving.service import MODEL_ROUTE, PREDICTION_ROUTES

from .test_service_imports import run


def test_the_built_service_documents_and_guards_get_model(production):
    package = bound().package
    script = (
        f"import json, {package}.service as s\n"
        "spec = s.Predictor.openapi_spec.asdict()\n"
        "guard = [options for cls, options in s.Predictor.middlewares if cls.__name__ == 'RequestGuard']\n"
        "print(json.dumps({'model': spec['paths'].get('/model'),\n"
        "    'protected': sorted(guard[0]['protected']), 'schemas': sorted(spec['components']['schemas'])}))"
    )
    result = run(script)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["model"] is not None, "GET /model is not in the service's OpenAPI document"
    assert set(found["model"]) == {"get"}
    assert {"200", "404"} <= set(found["model"]["get"]["responses"])
    assert "ModelCard" in found["schemas"]
    assert found["protected"] == ["/model", "/predict", "/predict_one"]
    # The tracing setting names the prediction routes before the service exists: the same as its APIs.
    assert found["protected"] == sorted([MODEL_ROUTE, *PREDICTION_ROUTES])
