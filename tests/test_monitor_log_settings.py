"""An installed default project, used as an operator would: what a torn request log, a misspelt setting and
a blocked events connection do to `train` and `monitor`.

- A misspelt key in settings.toml stops `train` with exit 2 and one line naming the key and its closest
  match (no traceback).
- The service is stopped, a torn line is left at the end of its request log (as a kill in the middle of a
  write leaves it), the service restarts and serves again: the new records start on a line of their own,
  and `monitor` succeeds, reads all of them, reports the skipped line and how little of the 24-hour window
  the young log covers. Labels with a blank, text or huge `row` are skipped and counted, not a failure.
- A real `prefect server start` behind a proxy that refuses the events websocket (as a corporate proxy
  may): the drift event reaches the server anyway, over the REST API, and `monitor` says so only then.
  When the proxy refuses the REST route for events too, `monitor` fails and says the retrain signal was
  lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import Project, copy_project, explain, prefect_server, serving, with_library

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Run in the project's environment with the package name as argv[1]: training rows, the request log's
# path, and a shifted copy of the rows written to argv[2] for a drift check.
ROWS = with_library("""
import json, sys
settings = internal("config").get_settings()
validation = internal("training.validation")
features = validation.load_dataset(settings).features.head(300).reset_index(drop=True)
shifted = features.copy()
for column in shifted.select_dtypes("number").columns:
    shifted[column] = shifted[column] + 2 * float(features[column].std() or 1)
shifted.to_csv(sys.argv[2], index=False)
print(json.dumps({
    "rows": json.loads(features.to_json(orient="records")),
    "log": str(settings.resolve(settings.storage.url) / "requests"),
    "labels": str(settings.resolve(settings.monitoring.labels_path)),
    "target": settings.data.target_column,
}))
""")


@pytest.fixture(scope="module")
def project(default_trained, tmp_path_factory, prefect_home) -> Project:
    """The module's own copy of the session's trained default project (3 trials, as it trained before)."""
    return copy_project(default_trained, tmp_path_factory.mktemp("operator"), prefect_home)


@pytest.fixture(scope="module")
def trained(project) -> Project:
    """The copy already has a production model: the name says what the tests taking it rely on."""
    return project


@pytest.fixture(scope="module")
def sample(trained, tmp_path_factory) -> dict:
    shifted = tmp_path_factory.mktemp("batches") / "shifted.csv"
    return trained.query(ROWS.replace("sys.argv[2]", repr(str(shifted)))) | {"shifted": str(shifted)}


def test_a_misspelt_setting_stops_train_with_one_line_naming_the_closest_key(project):
    settings = project.root / "settings.toml"
    original = settings.read_text()
    assert "\nn_trials = " in original
    settings.write_text(original.replace("\nn_trials = ", "\nn_trails = ", 1))
    try:
        result = project.cli("train")
    finally:
        settings.write_text(original)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: tuning.n_trails in {settings}: no such setting; did you mean tuning.n_trials?"]

    prefix = project.package.upper()
    typo = project.cli("train", **{f"{prefix}_TUNING__N_TRAILS": "3"})
    assert typo.returncode == 2, explain(typo)
    assert f"did you mean {prefix}_TUNING__N_TRIALS (tuning.n_trials)?" in typo.stderr


def send(base: str, rows: list[dict]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for start in range(0, len(rows), 30):
            response = client.post("/predict", json={"rows": rows[start : start + 30]})
            assert response.status_code == 200, response.text


def logged_lines(requests: Path, count: int, timeout: float = 30) -> list[str]:
    """The log's lines once it has at least `count` (each worker writes its objects every flush)."""
    for _ in range(int(timeout * 5)):
        files = sorted(requests.rglob("*.jsonl")) if requests.exists() else []
        lines = [line for file in files for line in file.read_text().splitlines()]
        if len(lines) >= count:
            return lines
        threading.Event().wait(0.2)
    pytest.fail(f"{requests}: {len(lines)} of {count} lines after {timeout} s")


def test_a_line_that_is_no_record_in_the_request_log_is_skipped_and_reported_by_monitor(
    trained, sample, tmp_path
):
    requests = Path(sample["log"])
    rows = sample["rows"]
    with serving(trained, tmp_path / "serve-1.log") as base:
        send(base, rows[:90])
        logged_lines(requests, 90)
    hour = datetime.now(UTC)
    foreign = requests / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}" / "foreign.jsonl"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text(  # an object in the log that is not the service's: its line is no record
        json.dumps({"request_id": "torn", "time": "2026-01-01T00:00:00+00:00", "features": {}})[:40] + "\n"
    )
    with serving(trained, tmp_path / "serve-2.log") as base:
        send(base, rows[90:180])
        logged_lines(requests, 181)

    labels = Path(sample["labels"])  # bad rows made `monitor` exit 1 (a NaN-to-integer cast)
    labels.write_text(f"request_id,row,{sample['target']}\na,,1\nb,first,1\nc,1e30,1\n")
    try:
        result = trained.cli("monitor")
    finally:
        labels.unlink()
    assert result.returncode == 0, explain(result)
    assert "rows=180 " in result.stdout and "skipped_lines=1 " in result.stdout
    output = result.stdout + result.stderr
    key = foreign.relative_to(requests.parent).as_posix()  # requests/date=.../hour=.../foreign.jsonl
    assert f"{key}:1 (not JSON" in output  # the flow's warning names object and line
    assert "of the requested 24 h" in output  # a young log: a short window, said so
    assert f"labels {labels}: 3 read, 3 skipped:" in output  # the labels' warning: the counts by cause
    for cause in ("row is blank", "row is not a whole number", "row is negative or too large"):
        assert f"1 {cause}" in output


# A proxy in front of a real Prefect server that refuses some requests, as a corporate proxy may refuse
# websockets. Each connection carries one request (it asks for `Connection: close`), so every request is
# seen.


class Proxy:
    def __init__(self, upstream_port: int, refuse: tuple[bytes, ...]) -> None:
        self.upstream_port = upstream_port
        self.refuse = refuse
        self.refused: list[str] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0]
        if request_line.startswith(self.refuse):
            self.refused.append(request_line.decode())
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        head = b"\r\n".join(lines[:-2] + [b"Connection: close", b"", b""])
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        upstream_writer.write(head)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(ConnectionError, OSError):
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@contextlib.contextmanager
def proxy(upstream: str, refuse: tuple[bytes, ...]) -> Iterator[Proxy]:
    running = Proxy(httpx.URL(upstream).port or 80, refuse)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(running.handle, "127.0.0.1", 0)
        running.port = server.sockets[0].getsockname()[1]
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # how it stops
            async with server:
                await server.serve_forever()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield running
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


WEBSOCKET = b"GET /api/events/in "
REST_EVENTS = b"POST /api/events "


def drift_events(api_url: str, package: str) -> list[dict]:
    response = httpx.post(
        f"{api_url}/events/filter",
        json={"filter": {"event": {"name": [f"{package}.drift.detected"]}}, "limit": 50},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["events"]


def test_a_drift_event_reaches_the_server_without_the_websocket_or_the_run_fails_saying_so(
    trained, sample, tmp_path
):
    package = trained.package
    with prefect_server(trained, tmp_path) as ui_url:
        api_url = f"{ui_url}/api"
        with proxy(ui_url, refuse=(WEBSOCKET,)) as blocked:
            result = trained.cli(
                "monitor",
                "--current",
                sample["shifted"],
                PREFECT_API_URL=f"http://127.0.0.1:{blocked.port}/api",
            )
        assert result.returncode == 0, explain(result)
        assert any(line.startswith(WEBSOCKET.decode()) for line in blocked.refused)
        assert "drifted=True event=True" in result.stdout
        [event] = drift_events(api_url, package)  # on the server itself, where the retrain trigger sees it

        prefix = package.upper()
        with proxy(ui_url, refuse=(WEBSOCKET, REST_EVENTS)) as cut_off:
            lost = trained.cli(
                "monitor",
                "--current",
                sample["shifted"],
                PREFECT_API_URL=f"http://127.0.0.1:{cut_off.port}/api",
                **{
                    f"{prefix}_MONITORING__EVENT_TIMEOUT_SECONDS": "3",
                    f"{prefix}_MONITORING__EVENT_RETRIES": "1",
                },
            )
        assert lost.returncode == 1, explain(lost)
        assert "error: retrain signal lost" in lost.stderr
        assert any(line.startswith(REST_EVENTS.decode()) for line in cut_off.refused)
        assert [e["id"] for e in drift_events(api_url, package)] == [event["id"]]  # no second event
