"""The prediction routes skip BentoML's OpenTelemetry middleware while no trace exporter is configured
(a span could never leave the process, and building them cost more CPU per request than the service's own
layers: docs/decisions.md#what-a-request-costs); with an exporter, every route is traced."""

from __future__ import annotations

import pytest
from bentoml._internal.configuration.containers import BentoMLContainer
from ml_lifecycle._internal.serving.service import untraced_routes
from opentelemetry.util.http import ExcludeList

BASE = "http://127.0.0.1:3000"


@pytest.fixture
def exporter():
    """BentoML's tracing.exporter_type set for one test, then back as it was."""
    setting = BentoMLContainer.tracing.exporter_type
    before = setting.get()
    setting.set("otlp")
    yield
    setting.set(before)


def test_without_an_exporter_only_the_prediction_routes_are_left_out():
    excluded = ExcludeList(untraced_routes()["excluded_urls"])
    for path in ("/predict", "/predict_one", "/predict_one?x=1"):
        assert excluded.url_disabled(BASE + path), path
    for path in ("/model", "/predictions", "/readyz", "/metrics", "/docs.json"):
        assert not excluded.url_disabled(BASE + path), path


def test_with_an_exporter_every_route_is_traced(exporter):
    assert untraced_routes() == {}
