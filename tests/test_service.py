"""The generated project's BentoML service, installed, trained and served for real, used only over HTTP.

One default project is rendered (with its tasks), installed, trained on a CSV a user might bring (numbers,
text categories, missing values), and served by its own `serve` command with two workers and an API key;
then the tests send good and bad requests, read /metrics and the request log, and let schemathesis loose
on the OpenAPI document the service publishes (/docs.json).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    Project,
    copy_project,
    explain,
    serving,
    with_library,
    write_regression_csv,
)

pytestmark = pytest.mark.slow

API_KEY = "test-" + secrets.token_hex(12)
MAX_ROWS = 50  # serving.max_rows for this server, so an oversized batch is a small request
TARGET = "segment"

# Run in the project's environment with the package name as argv[1]: the production model and real rows.
SAMPLE = with_library("""
import json, sys
settings = internal("config").get_settings()
aliases, validation = (
    internal(m) for m in ("registry.aliases", "training.validation")
)
import bentoml
tag = aliases.production_tag(settings)
model = bentoml.models.get(tag)
rows = json.loads(validation.load_dataset(settings).features.head(20).to_json(orient="records"))
print(json.dumps({
    "tag": tag,
    "schema": model.info.metadata["feature_schema"],
    "classes": [str(c) for c in bentoml.sklearn.load_model(model).classes_],
    "log": str(settings.resolve(settings.storage.url) / "requests"),
    "rows": rows,
}))
""")


def write_segment_csv(project: Path) -> Path:
    """data/train.csv for a classification: the housing rows of conftest, labelled by price band."""
    path = write_regression_csv(project)
    with path.open(newline="") as source:
        rows = list(csv.DictReader(source))
    median = statistics.median(float(r["price"]) for r in rows)
    with path.open("w", newline="") as sink:
        fields = [f for f in rows[0] if f != "price"] + [TARGET]
        writer = csv.DictWriter(sink, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            price = float(row.pop("price"))
            writer.writerow({**row, TARGET: "premium" if price > median else "standard"})
    return path


@pytest.fixture(scope="module")
def project(default_installed, tmp_path_factory, prefect_home) -> Project:
    """A copy of the session's untrained default project, trained here on the segment CSV."""
    installed = copy_project(
        default_installed,
        tmp_path_factory.mktemp("service"),
        prefect_home,
        settings={"DATA__PATH": "data/train.csv", "DATA__TARGET_COLUMN": TARGET},
    )
    write_segment_csv(installed.root)
    trained = installed.cli("train", "--n-trials", "3")
    assert trained.returncode == 0, explain(trained)
    return installed


@pytest.fixture(scope="module")
def model(project) -> dict:
    return project.query(SAMPLE)


@pytest.fixture(scope="module")
def serve_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve") / "serve.log"


@pytest.fixture(scope="module")
def service(project, model, serve_log) -> Iterator[str]:
    prefix = project.package.upper()
    settings = {
        f"{prefix}_API_KEY": API_KEY,
        f"{prefix}_SERVING__WORKERS": "2",
        f"{prefix}_SERVING__MAX_ROWS": str(MAX_ROWS),
        # Generous on a busy two-core test machine: this module tests answers, not load shedding.
        f"{prefix}_SERVING__MAX_LATENCY_MS": "20000",
    }
    with serving(project, serve_log, **settings) as base:
        yield base


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(service: str, path: str, body: dict, *, headers: dict | None = None) -> httpx.Response:
    """A JSON request with the API key."""
    return httpx.post(f"{service}{path}", json=body, headers={**AUTH, **(headers or {})}, timeout=60)


def field_of(schema: dict, kind: str, *, nullable: bool = False) -> str:
    return next(n for n, s in schema.items() if s["kind"] == kind and s["nullable"] == nullable)


def project_files(root: Path) -> Iterator[Path]:
    """Every file of the project (request logs included) except its virtualenv."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if d != ".venv"]
        yield from (Path(folder) / f for f in files)


def metric_samples(service: str, name: str) -> dict[tuple, float]:
    """The samples of one metric on /metrics, keyed by their sorted labels."""
    samples = {}
    for line in httpx.get(f"{service}/metrics", timeout=30).text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")))
            samples[labels] = float(match.group(2))
    return samples


def test_single_and_batch_requests_are_answered_by_the_production_model(service, model):
    rows = model["rows"][:5]
    one = post(service, "/predict_one", {"row": rows[0]}, headers={"X-Request-ID": "client-chosen-1"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["prediction"] in model["classes"]
    assert set(body["probabilities"]) == set(model["classes"])
    assert sum(body["probabilities"].values()) == pytest.approx(1)
    assert body["model_version"] == model["tag"]
    assert body["request_id"] == one.headers["x-request-id"] == "client-chosen-1"

    batch = post(service, "/predict", {"rows": rows})
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert len(body["predictions"]) == len(body["probabilities"]) == len(rows)
    assert body["predictions"][0] == one.json()["prediction"]
    assert body["model_version"] == model["tag"]
    assert body["request_id"] == batch.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])


def bad_requests(model: dict) -> list[tuple[str, str, dict, int, list[str]]]:
    """(name, path, httpx arguments, status, words the answer must contain)."""
    schema, row = model["schema"], model["rows"][0]
    number, category = field_of(schema, "number"), field_of(schema, "category")
    without = {k: v for k, v in row.items() if k != number}
    text = {"Content-Type": "text/plain"}
    return [
        ("missing field", "/predict", {"json": {"rows": [without]}}, 400, [number, "required"]),
        ("wrong type", "/predict", {"json": {"rows": [{**row, number: "lots"}]}}, 400, [number, "number"]),
        ("unknown category", "/predict_one", {"json": {"row": {**row, category: "ruined"}}}, 400, [category]),
        ("unknown field", "/predict_one", {"json": {"row": {**row, "colour": "red"}}}, 400, ["colour"]),
        (
            "not finite",
            "/predict_one",
            {"content": json.dumps({"row": {**row, number: float("nan")}})},
            400,
            [number],
        ),
        ("too large for the model", "/predict_one", {"json": {"row": {**row, number: 1e300}}}, 400, [number]),
        ("empty body", "/predict", {"content": b""}, 400, ["empty"]),
        ("empty rows", "/predict", {"json": {"rows": []}}, 400, ["rows", "at least 1"]),
        ("oversized batch", "/predict", {"json": {"rows": [row] * (MAX_ROWS + 1)}}, 400, [str(MAX_ROWS)]),
        ("not JSON", "/predict", {"content": b"{rows: 1"}, 400, ["JSON"]),
        (
            "undeclared type",
            "/predict",
            {"content": json.dumps({"rows": [row]}), "headers": text},
            415,
            ["json"],
        ),
        ("form data", "/predict_one", {"data": {"row": "x"}}, 415, ["application/json"]),
    ]


def test_bad_requests_get_a_4xx_that_names_the_problem(service, model):
    problems = []
    for name, path, arguments, status, words in bad_requests(model):
        headers = {**AUTH, **arguments.pop("headers", {})}
        if "content" in arguments:
            headers.setdefault("Content-Type", "application/json")
        response = httpx.post(f"{service}{path}", headers=headers, timeout=60, **arguments)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        body = response.json() if is_json else {}
        if response.status_code != status or not all(w in body.get("error", "") for w in words):
            problems.append(f"{name}: {response.status_code} {response.text[:300]}")
        elif body.get("request_id") != response.headers.get("x-request-id"):
            problems.append(f"{name}: no request id in the body: {response.text[:300]}")
    assert not problems, "\n".join(problems)


def test_rejected_values_stay_out_of_the_server_log(service, model, serve_log):
    """A 400 is logged as one line naming the field and its error; the value sent (which may be personal
    data) is not written anywhere on the server (serving.log_rejected_values is false by default)."""
    number = field_of(model["schema"], "number")
    secret = "Jane-Doe-" + secrets.token_hex(6)
    response = post(service, "/predict_one", {"row": {**model["rows"][0], number: secret}})
    assert response.status_code == 400 and number in response.json()["error"], response.text
    logged = f"POST /predict_one answered 400: row.{number}: float_parsing"
    deadline = time.monotonic() + 30
    while logged not in serve_log.read_text(errors="replace"):  # the server writes its log as it goes
        assert time.monotonic() < deadline, serve_log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    assert secret not in serve_log.read_text(errors="replace")


def test_the_api_key_guards_predictions_but_not_health_or_metrics(service, model, serve_log, project):
    row = {"row": model["rows"][0]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        refused = httpx.post(f"{service}/predict_one", json=row, headers=headers, timeout=30)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in refused.text
    assert httpx.post(f"{service}/predict_one", json=row, headers=AUTH, timeout=30).status_code == 200
    for path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert httpx.get(f"{service}{path}", timeout=30).status_code == 200, path
    assert API_KEY not in serve_log.read_text(errors="replace")
    assert not [f for f in project_files(project.root) if API_KEY.encode() in f.read_bytes()]


def test_get_model_answers_the_served_models_card_behind_the_api_key(service, model):
    """GET /model: the card `train` wrote for the model the service answers with (its data, parameters,
    metrics, importance by request field, versions, the gate's verdict), asking for the key as predictions
    do."""
    refused = httpx.get(f"{service}/model", timeout=30)
    assert refused.status_code == 401, refused.text
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    response = httpx.get(f"{service}/model", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    card = response.json()
    assert card["tag"] == model["tag"]
    assert (card["task_type"], card["target_column"]) == ("classification", TARGET)
    assert card["primary_metric"] in card["holdout_metrics"]
    assert card["trials"] >= 3 and set(card["parameters"]) <= set(card["search_space"])
    assert card["data_sources"][0]["part"] == "configured data" and card["data_sources"][0]["rows"] > 0
    assert sorted(i["column"] for i in card["importance"]) == sorted(model["schema"])
    assert card["versions"]["bentoml"] and card["versions"]["ml-lifecycle"]
    assert [v["passed"] for v in card["verdicts"]] == [True]  # the first model: no production to beat
    assert httpx.post(f"{service}/model", headers=AUTH, timeout=30).status_code == 405


def test_metrics_count_predictions_by_label_and_show_the_model_version(service, model):
    name = f"{model['tag'].split(':')[0]}_predictions_total"
    before = metric_samples(service, name)
    rows = model["rows"][:7]
    response = post(service, "/predict", {"rows": rows})
    assert response.status_code == 200, response.text
    one = post(service, "/predict_one", {"row": rows[0]})
    assert one.status_code == 200, one.text
    expected: dict[str, int] = {}
    for label in [*response.json()["predictions"], one.json()["prediction"]]:
        expected[str(label)] = expected.get(str(label), 0) + 1
    after = metric_samples(service, name)
    for label, count in expected.items():
        key = (("label", label), ("model_version", model["tag"]))
        assert after.get(key, 0) - before.get(key, 0) == count, (label, before, after)
    info = metric_samples(service, f"{model['tag'].split(':')[0]}_model_info")
    # The pipeline (numbers, text categories, missing values) converts, agrees, and is served by ONNX Runtime.
    name, version = model["tag"].split(":")[0], model["tag"]
    assert info == {(("model_name", name), ("model_version", version), ("runtime", "onnx")): 1.0}
    dropped = metric_samples(service, f"{model['tag'].split(':')[0]}_request_log_dropped_total")
    causes = ("buffer_full", "write_failed", "unserializable")
    assert dropped == {(("cause", cause),): 0.0 for cause in causes}
    requests = metric_samples(service, "bentoml_service_request_total")
    assert any(dict(k).get("endpoint") == "/predict" and v > 0 for k, v in requests.items())


def test_every_predicted_row_is_in_the_request_log(service, model):
    log = Path(model["log"])
    sent = {}
    for size in (1, 3, 4):
        request_id = uuid.uuid4().hex
        rows = {"rows": model["rows"][:size]}
        response = post(service, "/predict", rows, headers={"X-Request-ID": request_id})
        assert response.status_code == 200, response.text
        sent[request_id] = (size, response.json()["predictions"])
    request_id = uuid.uuid4().hex
    one = post(service, "/predict_one", {"row": model["rows"][5]}, headers={"X-Request-ID": request_id})
    sent[request_id] = (1, [one.json()["prediction"]])

    deadline = time.monotonic() + 30
    while True:  # the log is written by a background thread in each worker
        records: dict[str, list] = {}
        for file in log.rglob("*.jsonl"):  # every worker's objects in the store's hour partitions
            for line in file.read_text().splitlines():
                record = json.loads(line)
                records.setdefault(record["request_id"], []).append(record)
        if all(len(records.get(r, [])) == n for r, (n, _) in sent.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for request_id, (size, predictions) in sent.items():
        mine = sorted(records.get(request_id, []), key=lambda r: r["row"])
        assert len(mine) == size, (request_id, mine)
        assert [r["prediction"] for r in mine] == predictions
        assert all(r["model_version"] == model["tag"] and r["time"] for r in mine)
        assert set(mine[0]["features"]) == set(model["schema"])


def test_concurrent_single_rows_are_predicted_in_batches(project, service, model):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{service}/predict_one", json={"row": model["rows"][i % len(model["rows"])]})
                    for i in range(120)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(responses), {r.text for r in responses}
    sizes = metric_samples(service, f"{project.package}_batch_size_sum")
    counts = metric_samples(service, f"{project.package}_batch_size_count")
    rows, batches = sum(sizes.values()), sum(counts.values())
    assert rows > batches, f"{rows} rows in {batches} batches: no two requests were ever batched"


def test_schemathesis_finds_no_server_error(service, tmp_path):
    command = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert command, "schemathesis is a dev dependency of the generator: uv sync"
    result = subprocess.run(
        [
            command,
            "run",
            f"{service}/docs.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--max-examples",
            "40",
            "--seed",
            "7",
            "--generation-database",
            "none",
            "--request-timeout",
            "60",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
