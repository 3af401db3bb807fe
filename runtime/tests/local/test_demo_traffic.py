"""The demo's traffic reaches a service that has an API key: it sends the key the service reads."""

import pytest
from ml_lifecycle._internal.local.demo_traffic import service_client

KEY_ENV = "MY_ML_PROJECT_API_KEY"


def test_the_demos_client_sends_the_services_own_key(monkeypatch, settings):
    monkeypatch.setenv(KEY_ENV, "demo-key-123")
    with service_client("http://127.0.0.1:1", settings) as client:
        assert client.headers["Authorization"] == "Bearer demo-key-123"


def test_without_a_key_the_demos_client_sends_none(monkeypatch, settings):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with service_client("http://127.0.0.1:1", settings) as client:
        assert "Authorization" not in client.headers


def test_a_blank_key_stops_the_demo_as_it_stops_the_service(monkeypatch, settings):
    monkeypatch.setenv(KEY_ENV, " ")
    with pytest.raises(RuntimeError, match="set but blank"):
        service_client("http://127.0.0.1:1", settings)
