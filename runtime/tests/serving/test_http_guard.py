"""The HTTP guard (request ids, API key, body size, content types, readable errors, bounded metric labels) on
a toy app: no model, no server."""

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from ml_lifecycle._internal.serving.http_guard import (
    OTHER_ENDPOINT,
    RequestGuard,
    api_key_from,
    bounded_endpoint_label,
    key_from_secret_block,
    readable,
)
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

KEY_ENV = "MY_ML_PROJECT_TEST_API_KEY"


async def echo(request):
    body = await request.body()
    if not body:
        return JSONResponse(
            {"error": "1 validation error", "detail": [{"loc": ["rows"], "msg": "Field required"}]}, 400
        )
    return JSONResponse({"request_id": request.state.request_id, "bytes": len(body)})


async def health(request):
    return JSONResponse({"ok": True})


class Client:
    """Requests straight into the ASGI app, as BentoML's own in-process client sends them."""

    def __init__(self, app):
        self.app = app

    async def send(self, method: str, path: str, **kwargs) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            return await http.request(method, path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return asyncio.run(self.send("POST", path, **kwargs))

    def get(self, path: str, **kwargs) -> httpx.Response:
        return asyncio.run(self.send("GET", path, **kwargs))


def client(api_key_env: str = "", max_body_bytes: int = 0) -> Client:
    app = Starlette(
        routes=[
            Route("/predict", echo, methods=["POST"]),
            Route("/model", health, methods=["GET"]),
            Route("/readyz", health),
        ]
    )
    app.add_middleware(
        RequestGuard,
        protected=["/predict", "/model"],
        api_key_env=api_key_env,
        max_body_bytes=max_body_bytes,
    )
    return Client(app)


def test_every_response_carries_a_request_id_and_reuses_a_sane_one():
    http = client()
    fresh = http.post("/predict", json={"rows": []})
    assert fresh.headers["x-request-id"] == fresh.json()["request_id"]
    assert len(fresh.headers["x-request-id"]) == 32
    reused = http.post("/predict", json={}, headers={"X-Request-ID": "client-42"})
    assert reused.headers["x-request-id"] == reused.json()["request_id"] == "client-42"
    assert http.get("/readyz").headers["x-request-id"]
    hostile = http.post("/predict", json={}, headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert hostile.headers["x-request-id"] != "a b\tc" + "x" * 200


def test_without_a_configured_key_predictions_are_open(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert client(KEY_ENV).post("/predict", json={}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic s3cret"}, 401),
        ({"Authorization": "Bearer s3cret"}, 200),
    ],
)
def test_a_configured_key_guards_predictions_only(monkeypatch, headers, status):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    http = client(KEY_ENV)
    response = http.post("/predict", json={}, headers=headers)
    assert response.status_code == status
    assert response.json()["request_id"] == response.headers["x-request-id"]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert "s3cret" not in response.text
    assert http.get("/readyz").status_code == 200


def test_a_configured_key_guards_the_model_card_too(monkeypatch):
    """GET /model (the served model's card: its data sources, parameters, metrics) asks for the key as the
    prediction endpoints do; a GET has no body, so no content type is asked for."""
    monkeypatch.setenv(KEY_ENV, "s3cret")
    http = client(KEY_ENV)
    refused = http.get("/model")
    assert refused.status_code == 401 and refused.json()["request_id"] == refused.headers["x-request-id"]
    assert http.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    monkeypatch.delenv(KEY_ENV)
    assert client(KEY_ENV).get("/model").status_code == 200


@pytest.mark.parametrize("blank", ["", " ", "\t\n  "])
def test_a_key_variable_set_but_blank_refuses_to_start(monkeypatch, blank):
    monkeypatch.setenv(KEY_ENV, blank)
    with pytest.raises(RuntimeError, match=f"{KEY_ENV} .*set but blank.*unset it"):
        api_key_from(KEY_ENV)
    with pytest.raises(RuntimeError, match="set but blank"):
        RequestGuard(None, protected=["/predict"], api_key_env=KEY_ENV)


def test_no_variable_or_no_name_means_no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert api_key_from(KEY_ENV) == b""
    assert api_key_from("") == b""
    monkeypatch.setenv(KEY_ENV, " s3cret\n")  # a key file's trailing newline is not part of the key
    assert api_key_from(KEY_ENV) == b"s3cret"


def test_the_log_says_whether_the_key_is_on_and_never_shows_it(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="ml_lifecycle")  # as the service sets it
    monkeypatch.setenv(KEY_ENV, "s3cret")
    RequestGuard(None, protected=["/predict"], api_key_env=KEY_ENV)
    monkeypatch.delenv(KEY_ENV)
    RequestGuard(None, protected=["/predict"], api_key_env=KEY_ENV)
    on, off = caplog.records
    assert (on.levelname, off.levelname) == ("INFO", "WARNING")
    assert "API key on" in on.getMessage() and KEY_ENV in on.getMessage()
    assert "API key off" in off.getMessage() and "/predict" in off.getMessage()
    assert "s3cret" not in caplog.text


def test_the_key_never_shows_in_the_middleware_repr(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    guard = RequestGuard(None, protected=["/predict"], api_key_env=KEY_ENV)
    assert "s3cret" not in repr(guard)


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/xml"])
def test_other_content_types_get_415_naming_what_to_send(content_type):
    response = client().post("/predict", content=b"{}", headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_json_with_a_charset_is_accepted():
    response = client().post(
        "/predict", content=b"{}", headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200


def test_an_empty_body_is_named_as_such():
    response = client().post("/predict", content=b"", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "empty" in response.json()["error"]


def test_error_bodies_name_every_bad_field_and_lose_bentomls_list_wrapper():
    body = readable(
        [{"error": "2 validation errors", "detail": [{"loc": ["rows", 0, "size"], "msg": "Field required"}]}]
    )
    assert body["error"] == "rows.0.size: Field required"
    many = readable({"detail": [{"loc": ["row", f"c{i}"], "msg": "Field required"} for i in range(25)]})
    assert many["error"].endswith("and 15 more")


@pytest.mark.usefixtures("prefect_server")
def test_a_key_kept_in_a_prefect_secret_block_guards_predictions(monkeypatch):
    from prefect.blocks.system import Secret

    Secret(value="from-the-block").save("my-ml-project-api-key", overwrite=True)
    monkeypatch.setenv(KEY_ENV, "")  # restored (removed) after the test, whatever the function sets
    key_from_secret_block("my-ml-project-api-key", KEY_ENV)
    http = client(api_key_env=KEY_ENV)
    assert http.post("/predict", json={"rows": []}).status_code == 401
    authorized = {"Authorization": "Bearer from-the-block"}
    assert http.post("/predict", json={"rows": []}, headers=authorized).status_code == 200


@pytest.mark.usefixtures("prefect_server")
def test_a_missing_secret_block_is_named_with_the_fix():
    with pytest.raises(RuntimeError, match="no-such-block.*prefect block create secret"):
        key_from_secret_block("no-such-block", KEY_ENV)


def test_a_declared_body_over_the_limit_gets_413_before_it_is_read():
    async def never(request):  # the endpoint must not run, so nothing reads the body
        raise AssertionError("the endpoint ran")

    app = Starlette(routes=[Route("/predict", never, methods=["POST"])])
    app.add_middleware(RequestGuard, protected=["/predict"], max_body_bytes=1024)
    response = Client(app).post("/predict", content=b"x" * 1025, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "1024" in response.json()["error"] and "serving.max_body_bytes" in response.json()["error"]
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert response.headers["connection"] == "close"


def oversized(declared: int, chunks: int, max_discarded_bytes: int, **headers: str) -> list:
    """What a guard with a 1 MB limit does for a POST declaring `declared` bytes whose client sends
    `chunks` of 64 KiB: the messages it sends, and "read" for each chunk it reads, in order."""
    events: list = []
    pending = [b"x" * 65536] * chunks

    async def never(scope, receive, send):
        raise AssertionError("the endpoint ran")

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        events.append("read")
        pending.pop()
        return {"type": "http.request", "body": b"x" * 65536, "more_body": bool(pending)}

    async def send(message):
        events.append(message)

    guard = RequestGuard(
        never, protected=["/predict"], max_body_bytes=1_000_000, max_discarded_bytes=max_discarded_bytes
    )
    head = {"content-type": "application/json", "content-length": str(declared), **headers}
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(k.encode(), v.encode()) for k, v in head.items()],
    }
    asyncio.run(guard(scope, receive, send))
    return events


def test_a_client_that_sends_its_whole_oversized_body_first_still_gets_the_413():
    """urllib and httpx read the answer only once the body is sent: a server that closed the connection
    before reading it gave them a reset. The 413 goes out at once and ends after the body was read."""
    events = oversized(40 * 65536, 40, max_discarded_bytes=10_000_000)
    start, body, *reads, end = events
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]
    assert b"serving.max_body_bytes" in body["body"] and body["more_body"]  # the whole answer, at once
    assert reads == ["read"] * 40  # then every byte the client sends
    assert end == {"type": "http.response.body", "body": b""}


@pytest.mark.parametrize(
    ("declared", "max_discarded_bytes", "headers"),
    [
        (200_000_000, 100_000_000, {}),  # declared beyond what is worth reading: cut off
        (40 * 65536, 100_000_000, {"expect": "100-continue"}),  # the client waits for a go it never gets
        (40 * 65536, 0, {}),  # discarding turned off
    ],
)
def test_an_oversized_body_that_is_not_worth_reading_is_answered_and_cut_off(
    declared, max_discarded_bytes, headers
):
    events = oversized(declared, 40, max_discarded_bytes, **headers)
    assert "read" not in events
    assert events[0]["status"] == 413 and events[-1] == {"type": "http.response.body", "body": b""}


def test_a_body_at_the_limit_reaches_the_endpoint():
    response = client(max_body_bytes=1024).post(
        "/predict", content=b"x" * 1024, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["bytes"] == 1024


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit() -> None:
    sent: list[int] = []

    async def chunks(count: int) -> AsyncIterator[bytes]:  # no Content-Length: the body is streamed
        for _ in range(count):
            sent.append(1)
            yield b"x" * 1000

    large = client(max_body_bytes=10_000).post(
        "/predict", content=chunks(1000), headers={"Content-Type": "application/json"}
    )
    assert large.status_code == 413
    assert len(sent) < 20, f"{len(sent)} chunks of 1,000 bytes read for a limit of 10,000"
    small = client(max_body_bytes=10_000).post(
        "/predict", content=chunks(10), headers={"Content-Type": "application/json"}
    )
    assert small.status_code == 200
    assert small.json()["bytes"] == 10_000


def test_paths_outside_the_services_routes_share_one_metrics_label() -> None:
    """BentoML's own metrics middleware, made to label unknown paths as one: the series stay bounded
    whatever paths clients try, and the app still sees (and answers) the real path."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from bentoml._internal.server.metrics.prometheus import PrometheusClient

    async def where(request):
        return JSONResponse({"path": request.url.path})

    app = Starlette(routes=[Route("/predict", where, methods=["POST"]), Route("/echo/{rest:path}", where)])
    middleware = bounded_endpoint_label(RunnerTrafficMetricsMiddleware, ["/predict"])
    metrics = middleware(app, namespace="guard_test")
    metrics._setup(metrics_client=PrometheusClient(multiproc=False))

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=metrics)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
            answers = [await http.get(f"/probe/{i}") for i in range(50)]
            return [*answers, await http.get("/echo/real"), await http.post("/predict")]

    *probes, echoed, predicted = asyncio.run(requests())
    assert {r.status_code for r in probes} == {404}
    assert echoed.json() == {"path": "/echo/real"}
    assert predicted.json() == {"path": "/predict"}
    (family,) = metrics.metrics_request_total.collect()
    counts = {
        (s.labels["endpoint"], s.labels["http_response_code"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counts == {(OTHER_ENDPOINT, "404"): 50, (OTHER_ENDPOINT, "200"): 1, ("/predict", "200"): 1}
