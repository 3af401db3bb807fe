"""The generated service against a hostile client: a real `bentoml serve` of one installed default project.

What a probe of the service found and what must hold now: paths it does not serve never become new metric
series; a body over serving.max_body_bytes gets a 413 before it is read, and does not hold up other
requests, and a client that sends its whole body before reading (httpx, urllib) gets that 413 too, not a
connection reset; a connection that sends nothing, or stalls or trickles inside its headers, is closed (408)
after serving.header_timeout_seconds; SIGTERM lets the requests the server has begun finish; a blank API key
stops the service instead of opening it; the start-up log says whether the API key is on; a request log
that cannot be written fails readiness (naming it) and is logged once; a broken alias record is a metric
and one log line while the model keeps serving. Bounded loops, no timed assertions.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import Project, copy_project, free_port, serving, started, with_library

pytestmark = pytest.mark.slow

MAX_BODY = 1_000_000  # serving.max_body_bytes for these servers
HEADER_TIMEOUT = 3  # serving.header_timeout_seconds for the module's server


@pytest.fixture(scope="module")
def project(default_trained, tmp_path_factory, prefect_home) -> Project:
    """The module's own copy of the session's trained default project."""
    return copy_project(default_trained, tmp_path_factory.mktemp("hostile"), prefect_home)


def settings(project: Project, **values: str) -> dict[str, str]:
    return {f"{project.package.upper()}_{key}": value for key, value in values.items()}


@pytest.fixture(scope="module")
def served(project, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A server without an API key: its URL and its log."""
    log = tmp_path_factory.mktemp("hostile-serve") / "serve.log"
    limits = settings(
        project, SERVING__MAX_BODY_BYTES=str(MAX_BODY), SERVING__HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT)
    )
    with serving(project, log, **limits) as base:
        yield base, log


@pytest.fixture(scope="module")
def row(served) -> dict:
    """A valid row, built from the request schema the service publishes."""
    base, _ = served
    schema = httpx.get(f"{base}/docs.json", timeout=30).json()["components"]["schemas"]["Features"]
    values = {"number": 1.0, "integer": 1, "boolean": True, "string": "x"}
    row = {}
    for name, field in schema["properties"].items():
        kinds = [field, *field.get("anyOf", [])]
        enum = next((k["enum"] for k in kinds if "enum" in k), None)
        row[name] = enum[0] if enum else next(values[k["type"]] for k in kinds if k.get("type") in values)
    return row


def metric_lines(base: str) -> list[str]:
    return [line for line in httpx.get(f"{base}/metrics", timeout=60).text.splitlines() if line[:1] != "#"]


def test_paths_the_service_does_not_serve_share_one_metrics_label(served):
    base, _ = served
    with httpx.Client(base_url=base, timeout=30) as http:
        for i in range(300):
            assert http.get(f"/probe-{i}/x").status_code == 404
        assert http.post("/predict/../../etc/passwd").status_code == 404
        assert http.get("/docs.json").status_code == 200
    lines = metric_lines(base)
    endpoints = {m for line in lines for m in re.findall(r'endpoint="([^"]*)"', line)}
    assert not [e for e in endpoints if "probe" in e or "passwd" in e]
    served_routes = {
        "/predict",
        "/predict_one",
        "/",
        "/docs.json",
        "/schema.json",
        "/readyz",
        "/livez",
        "/healthz",
    }
    assert endpoints <= served_routes | {"other"}
    assert "other" in endpoints
    before = len(lines)
    with httpx.Client(base_url=base, timeout=30) as http:
        for i in range(300):
            http.get(f"/second-probe-{i}")
    assert len(metric_lines(base)) == before


def metric_value(base: str, series: str) -> float | None:
    """The value of one series on /metrics (`name` or `name{label="value"}`), None when it is not there."""
    for line in metric_lines(base):
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def wait_until(probe, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.5)
    return found


ALIAS_FILE = with_library("""
import json, sys
settings = internal("config").get_settings()
aliases = internal("registry.aliases")
path = internal("storage").open_storage(settings).local_root / aliases.key(settings)
print(json.dumps({"path": str(path), "poll": settings.rollout.poll_seconds}))
""")


def test_a_broken_alias_record_is_a_metric_and_one_log_line_while_the_model_keeps_serving(
    project, served, row
):
    """Runs before the tests that start a second server: BentoML empties $BENTOML_HOME's
    prometheus_multiproc_dir when a server starts, and the first server's own metrics then vanish from its
    /metrics."""
    base, log = served
    alias = project.query(ALIAS_FILE)
    path, gauge = Path(alias["path"]), f"{project.package}_alias_record_valid"
    saved = path.read_bytes()
    assert metric_value(base, gauge) == 1
    try:
        path.write_text('{"history": [')  # a hand edit gone wrong
        wait_until(lambda: metric_value(base, gauge) == 0, "the broken record on /metrics")
        polls_later = time.monotonic() + 3 * alias["poll"]
        while time.monotonic() < polls_later:  # traffic over several polls of the broken record
            answer = httpx.post(f"{base}/predict_one", json={"row": row}, timeout=60)
            assert answer.status_code == 200 and answer.json()["model_version"], answer.text
    finally:
        path.write_bytes(saved)
    wait_until(lambda: metric_value(base, gauge) == 1, "the restored record on /metrics")
    text = log.read_text(errors="replace")
    assert text.count(f"{path}: the production alias record is not JSON") == 1, text[-3000:]
    assert "Could not swap" not in text


def raw_request(base: str, path: str, headers: dict[str, str]) -> socket.socket:
    """A connection with the request line and headers sent, the body still to come."""
    url = urlsplit(base)
    connection = socket.create_connection((url.hostname, url.port), timeout=60)
    head = [f"POST {path} HTTP/1.1", f"Host: {url.hostname}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return connection


def answered(connection: socket.socket, wait: float) -> bool:
    return bool(select.select([connection], [], [], wait)[0])


def read_raw(connection: socket.socket) -> bytes:
    """The one response on `connection`, head and body (the server may close the connection after it)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < content_length(data):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_response(connection: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response on `connection`."""
    data = read_raw(connection)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body[: content_length(data)] or b"null")


def content_length(data: bytes) -> int:
    found = re.search(rb"(?im)^content-length:\s*(\d+)", data.partition(b"\r\n\r\n")[0])
    return int(found.group(1)) if found else 0


def test_a_declared_oversized_body_gets_413_before_it_is_sent(served):
    base, _ = served
    declared = 50 * MAX_BODY
    with raw_request(base, "/predict", {"Content-Length": str(declared)}) as connection:
        connection.sendall(b'{"rows": [' + b" " * 65536)
        status, body = read_response(connection)  # the other 49.9 MB are never sent
    assert status == 413, body
    assert "serving.max_body_bytes" in body["error"] and str(MAX_BODY) in body["error"]


def test_a_streamed_oversized_body_is_cut_off_while_other_requests_are_answered(served, row):
    base, _ = served
    chunk = b" " * 65536
    with raw_request(base, "/predict", {"Transfer-Encoding": "chunked"}) as upload:
        upload.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) * (MAX_BODY // len(chunk) // 2))
        # Half the limit is in and the upload goes on: the server answers others meanwhile.
        others = [
            httpx.post(f"{base}/predict_one", json={"row": row}, timeout=60).status_code for _ in range(5)
        ]
        assert not answered(upload, 0), "the upload was answered before it passed the limit"
        sent = MAX_BODY // 2
        while not answered(upload, 0.2) and sent < 50 * MAX_BODY:
            upload.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        status, body = read_response(upload)
    assert others == [200] * 5
    assert status == 413, body
    assert sent < 3 * MAX_BODY, f"{sent} bytes sent before the 413"


def test_a_client_that_sends_its_whole_oversized_body_first_gets_the_413(served):
    """httpx and urllib send the whole body before they read the answer: a server that closed the connection
    as soon as it had answered left them with a connection reset instead of the 413."""
    base, _ = served
    body = b'{"rows": [' + b" " * (44 * MAX_BODY) + b"]}"
    headers = {"Content-Type": "application/json"}
    response = httpx.post(f"{base}/predict", content=body, headers=headers, timeout=120)
    assert response.status_code == 413, response.text
    assert "serving.max_body_bytes" in response.json()["error"]
    request = urllib.request.Request(f"{base}/predict", data=body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=120)
    assert refused.value.code == 413


def connect(base: str) -> socket.socket:
    url = urlsplit(base)
    return socket.create_connection((url.hostname, url.port), timeout=60)


def until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (the 60 s socket timeout bounds it)."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def test_a_connection_that_sends_nothing_is_closed(served):
    base, _ = served
    with connect(base) as idle:
        assert until_closed(idle) == b""


def test_a_request_stalled_inside_its_headers_gets_408_and_the_connection_is_closed(served, row):
    base, _ = served
    with connect(base) as stalled:
        stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        others = [
            httpx.post(f"{base}/predict_one", json={"row": row}, timeout=60).status_code for _ in range(3)
        ]
        answer = until_closed(stalled)
    assert others == [200] * 3
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_headers_trickled_a_byte_at_a_time_do_not_hold_the_connection(served):
    """Each byte would reset a timer that restarts on traffic; the deadline counts from the first."""
    base, _ = served
    head = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100 + b"\r\n\r\n"
    sent = 0
    with connect(base) as slow:
        while sent < len(head) and not answered(slow, 0.25):  # 100 bytes at 4 a second: 30 s of headers
            slow.sendall(head[sent : sent + 1])
            sent += 1
        answer = until_closed(slow)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert sent < len(head), "the whole trickled request was read"


def test_a_kept_alive_connection_that_stalls_in_its_next_request_is_closed(served):
    base, _ = served
    with connect(base) as kept:
        kept.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = read_raw(kept)
        kept.sendall(b"GET /readyz HTTP/1.1\r\nHo")
        answer = until_closed(kept)
    assert first.startswith(b"HTTP/1.1 200 "), first
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def in_progress(base: str, endpoint: str) -> float:
    """BentoML's gauge of the requests to `endpoint` its app has begun (headers read), not answered."""
    lines = [line for line in metric_lines(base) if line.startswith("bentoml_service_request_in_progress{")]
    return sum(float(line.rpartition(" ")[2]) for line in lines if f'endpoint="{endpoint}"' in line)


def answers_readyz(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def bentoml_serve_pid(port: int) -> int:
    """The process running BentoML's arbiter for `port`, the one Kubernetes signals: `python -m <package>
    serve`, which runs `bentoml serve`'s command in-process (or `bentoml serve` itself), not `uv run`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [part.decode(errors="replace") for part in command]
            program = Path(words[0]).name if words else ""
            if "serve" in words and str(port) in words and program.startswith(("python", "bentoml")):
                return int(entry.name)
    raise AssertionError(f"no process serving BentoML on port {port}")


def test_sigterm_lets_the_requests_in_flight_finish(project, row, tmp_path):
    """Requests the server has begun (headers read, body still arriving) are answered 200 after SIGTERM,
    and the server then exits. The key is on for this server: the log says so and never shows the key."""
    key = "hostile-" + os.urandom(8).hex()
    log = tmp_path / "serve.log"
    env = settings(project, API_KEY=key, SERVING__MAX_BODY_BYTES=str(MAX_BODY))
    with serving(project, log, **env) as base:
        body = json.dumps({"row": row}).encode()
        half = len(body) // 2
        headers = {"Content-Length": str(len(body)), "Authorization": f"Bearer {key}"}
        in_flight = [raw_request(base, "/predict_one", headers) for _ in range(8)]
        for connection in in_flight:
            connection.sendall(body[:half])
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
        wait_until(lambda: in_progress(base, "/predict_one") >= 8, "the worker began the 8 requests")
        server = bentoml_serve_pid(urlsplit(base).port)
        os.kill(server, signal.SIGTERM)
        wait_until(lambda: not answers_readyz(base), "the server stops taking new requests")
        for connection in in_flight:
            connection.sendall(body[half:])
        answers = [read_response(connection) for connection in in_flight]
        for connection in in_flight:
            connection.close()
        deadline = time.monotonic() + 60
        while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not Path(f"/proc/{server}").exists(), "bentoml serve still runs 60 s after SIGTERM"
    assert [status for status, _ in answers] == [200] * 8, answers
    assert all(answer["model_version"] for _, answer in answers)
    text = log.read_text(errors="replace")
    assert "API key on" in text
    assert key not in text


def test_the_log_says_when_the_api_key_is_off(served):
    _, log = served
    assert "API key off" in log.read_text(errors="replace")


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_api_key_stops_the_service(project, blank):
    port = str(free_port())
    command = ["uv", "run", "python", "-m", project.package, "serve", "--port", port]
    result = project.run(*command, timeout=180, **settings(project, API_KEY=blank))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{project.package.upper()}_API_KEY" in output and "set but blank" in output, output[-3000:]


def test_a_store_that_refuses_the_request_log_costs_no_request_and_loses_no_record(project, row, tmp_path):
    """The request log's folder in the store is taken by a file (no write can succeed, even by root): the
    service stays ready and answers, the records wait (pending says how many), the log says why once, and
    once the store is fixed they are written, none dropped."""
    requests = project.root / ".state" / "store" / "requests"
    aside = requests.with_name("requests.aside")
    if requests.exists():
        requests.rename(aside)
    requests.write_text("a file where the request log's folder goes")
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{free_port()}"
    command = ["uv", "run", "python", "-m", project.package, "serve", "--port", base.rpartition(":")[2]]
    env = {**project.env, **settings(project, SERVING__REQUEST_LOG_FLUSH_SECONDS="0.2")}
    metric = f"{project.package}_request_log"
    try:
        with started(command, cwd=project.root, env=env, log=log, ready_url=f"{base}/livez"):
            assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
            answers = [httpx.post(f"{base}/predict_one", json={"row": row}, timeout=60) for _ in range(10)]
            assert [a.status_code for a in answers] == [200] * 10
            wait_until(lambda: metric_value(base, f"{metric}_pending") == 10, "10 records kept for the store")
            assert metric_value(base, f'{metric}_dropped_total{{cause="write_failed"}}') == 0
            assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
            requests.unlink()  # fixed: the next retry writes what waited
            wait_until(
                lambda: metric_value(base, f"{metric}_written_total") == 10, "the kept records written"
            )
            assert metric_value(base, f"{metric}_pending") == 0
    finally:
        if requests.is_file():
            requests.unlink()
        if aside.exists():
            for moved in aside.rglob("*.jsonl"):  # the log written before this test goes back in place
                target = requests / moved.relative_to(aside)
                target.parent.mkdir(parents=True, exist_ok=True)
                moved.rename(target)
    text = log.read_text(errors="replace")
    assert text.count("request log: cannot write to") == 1, text[-3000:]  # once, not per retry
    assert "Traceback" not in text, text[-3000:]
    assert "writing to" in text and "again; 0 records were dropped" in text
