"""Benchmark P9: the shared state on object storage, next to the same work on local files.

    uv run python benchmarks/shared_state.py [--records 1000000] [--reads 3] [--seconds 15]
                                             [--concurrency 32] [--quick] [--keep] [--project-dir DIR]
                                             [--repeats N]

Renders and installs a default project (and trains a production model: the second half serves it) and
measures inside it, against moto's S3 server on 127.0.0.1 (`moto_server` from the generator's
environment; it runs offline) and a local folder store:

1. The monitor's window read (monitoring/served_traffic.py, the function the monitor flow calls) of
   --records request-log records (1,000,000) written by two replicas over the last
   monitoring.window_hours, in the store's layout
   (`requests/date=.../hour=.../<replica>-<worker>-<seq>.jsonl`, --records-per-object records a flush),
   once in a folder and once in a bucket: `seconds_s3` and `seconds_local` are medians over --reads
   reads, `ratio_to_local` divides them. The records are real rows of the training data, as
   RequestRecord lines (records.py) with ids and times of their own.
2. The request log's cost on serving throughput: P3's load (`hey`, --concurrency clients, one real row to
   /predict_one, --seconds after a warm-up; ml_lifecycle/_internal/bench/serving.py) on the project's
   service with its request log flushed to the S3 store (`rps_s3`) and to a local folder store
   (`rps_local`), in alternating order over --rounds rounds: `throughput_ratio` = median rps_s3 / median
   rps_local. The production model is copied into the bucket first, so both services serve the same model.
   moto answers on the same two cores as the service and hey: the S3 figures include its CPU time, which
   a remote store would not cost this machine.

Goals P9: ratio_to_local <= 2, throughput_ratio >= 0.95. `--quick` (20,000 records, one read each,
3 s of load, one round) checks the wiring, not the goals. Needs `hey` (apt-get install hey) for the second
half. `load_average` (1 min, before and after) says how busy the machine was. The last line printed is one
JSON object; the exit code is non-zero only on errors, never because a goal was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import clean_up, load_project, log, ratio, run
from ml_lifecycle._internal.bench.goals import verdicts

GOALS = {"ratio_to_local": ("<=", 2.0), "throughput_ratio": (">=", 0.95)}
MARKER = "SHARED_STATE_BENCHMARK_RUN"  # in every server's environment, so leftovers can be found by it
# moto_server from the generator's environment: the project's has no moto (set before the script re-runs
# itself inside the project, and inherited there).
MOTO = "SHARED_STATE_BENCHMARK_MOTO"
REPLICAS = ("east", "west")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "benchmark",
    "AWS_SECRET_ACCESS_KEY": "benchmark",
    "AWS_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server(logs: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its endpoint and points this process (and what it starts) at
    it with test credentials."""
    from ml_lifecycle._internal.bench.serving import free_port, ready, stop
    from ml_lifecycle._internal.local.processes import spawn

    binary = os.environ.get(MOTO)
    if not binary or not Path(binary).exists():
        raise RuntimeError(
            f"moto_server not found ({MOTO}={binary!r}): run this from the generator's checkout"
        )
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = spawn(
        [binary, "-H", "127.0.0.1", "-p", str(port)], log=logs / "moto.log", env=os.environ, cwd=logs
    )
    try:
        deadline = time.monotonic() + 60
        while not ready(f"{endpoint}/moto-api/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {(logs / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.2)
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        yield endpoint
    finally:
        stop(process, [])


def make_bucket(endpoint: str, name: str) -> None:
    import httpx

    httpx.put(f"{endpoint}/{name}", timeout=30).raise_for_status()


def record_lines(
    settings, records: int, start: datetime, end: datetime
) -> Iterator[tuple[str, datetime, str]]:
    """(replica, time, JSON line) for `records` records spread evenly over [start, end), alternating
    between the replicas. The lines are RequestRecord lines of real training rows; each differs in its id
    and time only (written by string, not one model_dump a record: a million of those cost a minute)."""
    from ml_lifecycle._internal.records import RequestRecord
    from ml_lifecycle._internal.training.validation import load_dataset

    frame = load_dataset(settings).features.head(200)
    rows = json.loads(frame.to_json(orient="records"))
    tails = []
    for index, row in enumerate(rows):
        line = RequestRecord(
            request_id="x", time=start, endpoint="/predict_one", model_version="bench:1", row=0,
            features=row, prediction=index % 2, probabilities={"0": 0.4, "1": 0.6},
        ).line()  # fmt: skip
        tails.append(line[line.index(',"endpoint"') :])
    step = (end - start) / records
    for index in range(records):
        at = start + step * index
        head = f'{{"request_id":"{uuid.UUID(int=index).hex}","time":"{at.isoformat()}"'
        yield REPLICAS[index % 2], at, head + tails[index % len(tails)]


def write_log(storage, settings, records: int, per_object: int, start: datetime, end: datetime) -> int:
    """The request log of two replicas in the store's layout, one object per flush; returns the objects."""
    from ml_lifecycle._internal.storage import REQUESTS

    pending: dict[str, list[str]] = {r: [] for r in REPLICAS}
    sequence = dict.fromkeys(REPLICAS, 0)
    hour: dict[str, datetime | None] = dict.fromkeys(REPLICAS, None)
    objects = 0

    def flush(replica: str) -> None:
        nonlocal objects
        if not pending[replica] or hour[replica] is None:
            return
        at = hour[replica]
        key = f"{REQUESTS}/date={at:%Y-%m-%d}/hour={at:%H}/{replica}-1-{sequence[replica]:08d}.jsonl"
        storage.write(key, ("\n".join(pending[replica]) + "\n").encode())
        sequence[replica] += 1
        pending[replica] = []
        objects += 1

    for replica, at, line in record_lines(settings, records, start, end):
        this_hour = at.replace(minute=0, second=0, microsecond=0)
        if hour[replica] != this_hour or len(pending[replica]) >= per_object:
            flush(replica)  # a flush never spans two hour partitions
            hour[replica] = this_hour
        pending[replica].append(line)
    for replica in REPLICAS:
        flush(replica)
    return objects


def served_traffic_module():
    from ml_lifecycle._internal.monitoring import served_traffic

    return served_traffic


def timed_read(storage, start: datetime, end: datetime, expected: int) -> float:
    """Seconds of one window read (the monitor's function, on the store alone), which must return every
    record."""
    began = time.perf_counter()
    window = served_traffic_module().read_window(storage, start, end)
    seconds = time.perf_counter() - began
    if len(window) != expected:
        raise RuntimeError(f"{storage.url}: the window read {len(window)} records of {expected}")
    return seconds


def settings_with(config, **values: str):
    """The project's settings with `values` (section__key) in the environment, read afresh."""
    os.environ.update({config.ENV_PREFIX + key: value for key, value in values.items()})
    config.get_settings.cache_clear()
    return config.get_settings()


def window_read(config, endpoint: str, work: Path, args: argparse.Namespace) -> dict:
    """Part 1: the same records in a folder and in a bucket, read by the monitor's window read."""
    from ml_lifecycle._internal.storage import Storage

    bucket = f"p9-window-{uuid.uuid4().hex[:8]}"
    make_bucket(endpoint, bucket)
    places = {"local": (work / "store-local").as_uri(), "s3": f"s3://{bucket}/team"}
    end = datetime.now(UTC).replace(microsecond=0)
    settings = config.get_settings()
    start = end - timedelta(hours=settings.monitoring.window_hours)
    figures: dict = {"records": args.records, "records_per_object": args.records_per_object}
    stores = {name: Storage(url) for name, url in places.items()}
    for name, storage in stores.items():
        began = time.perf_counter()
        objects = write_log(storage, settings, args.records, args.records_per_object, start, end)
        figures[f"seconds_write_{name}"] = round(time.perf_counter() - began, 2)
        figures["objects"] = objects
        log(f"{name}: {args.records} records in {objects} objects written ({storage.url})")
    for storage in stores.values():  # untimed: the first read pays for imports and connections
        served_traffic_module().read_window(storage, end - timedelta(hours=1), end)
    reads: dict[str, list[float]] = {"local": [], "s3": []}
    for repeat in range(args.reads):  # alternating, so a busy moment does not fall on one side only
        for name in ("local", "s3") if repeat % 2 == 0 else ("s3", "local"):
            reads[name].append(timed_read(stores[name], start, end + timedelta(seconds=1), args.records))
            log(f"{name}: window read in {reads[name][-1]:.2f} s")
    for name, seconds in reads.items():
        figures[f"seconds_{name}"] = round(statistics.median(seconds), 3)
        figures[f"reads_{name}"] = [round(s, 3) for s in seconds]
    figures["ratio_to_local"] = ratio(figures["seconds_s3"], figures["seconds_local"])
    return figures


def copy_models(source, target) -> int:
    """The registered models and the production alias, object by object, from one store to another."""
    from ml_lifecycle._internal.storage import ALIASES, MODELS

    copied = 0
    for folder in (MODELS, ALIASES):
        for listed in source.list(folder):
            target.write(listed.key, source.read_bytes(listed.key) or b"")
            copied += 1
    return copied


def serving_cost(config, endpoint: str, work: Path, args: argparse.Namespace) -> dict:
    """Part 2: P3's load on the service, its request log flushed to the bucket vs to a folder."""
    from ml_lifecycle._internal.bench.serving import free_port, measure, server
    from ml_lifecycle._internal.storage import Storage, open_storage
    from ml_lifecycle._internal.training.validation import load_dataset

    settings = settings_with(config)
    local_store = open_storage(settings)
    bucket = f"p9-serving-{uuid.uuid4().hex[:8]}"
    make_bucket(endpoint, bucket)
    places = {"local": local_store.url, "s3": f"s3://{bucket}/team"}
    copied = copy_models(local_store, Storage(places["s3"]))
    if not copied:
        raise RuntimeError(f"no model in {local_store.url}: train first (python -m <package> train)")
    frame = load_dataset(settings).features
    body = work / "body.json"
    body.write_text(json.dumps({"row": json.loads(frame.head(1).to_json(orient="records"))[0]}))
    env = {k: v for k, v in os.environ.items() if k != settings.serving.api_key_env}
    env[MARKER] = os.environ[MARKER]
    rps: dict[str, list[float]] = {"local": [], "s3": []}
    variants: dict[str, list[dict]] = {"local": [], "s3": []}
    for round_ in range(args.rounds):
        for name in ("local", "s3") if round_ % 2 == 0 else ("s3", "local"):
            port = free_port()
            command = [
                sys.executable,
                "-m",
                config.PACKAGE,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            server_env = {**env, f"{config.ENV_PREFIX}STORAGE__URL": places[name]}
            with server(
                f"service-{name}-{round_}", command, server_env, port, work, settings.root
            ) as running:
                figures = measure(running, body, args.seconds, args.warmup, args.concurrency)
            rps[name].append(figures["rps"])
            variants[name].append({k: figures[k] for k in ("rps", "p50_ms", "p99_ms", "non_2xx")})
    logged = len(Storage(places["s3"]).list("requests"))
    return {
        "rps_local": round(statistics.median(rps["local"]), 1),
        "rps_s3": round(statistics.median(rps["s3"]), 1),
        "throughput_ratio": ratio(statistics.median(rps["s3"]), statistics.median(rps["local"])),
        "request_log_objects_s3": logged,
        "serving_rounds": variants,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="request-log records (1,000,000)")
    parser.add_argument("--records-per-object", type=int, default=2_000, help="records a flush (2,000)")
    parser.add_argument("--reads", type=int, default=3, help="window reads of each store (3)")
    parser.add_argument("--seconds", type=float, default=15, help="measured load per service (15)")
    parser.add_argument("--warmup", type=float, default=3, help="untimed load before each (3)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two services (2)")
    parser.add_argument("--quick", action="store_true", help="20,000 records, one read, 3 s of load")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, the local store)")
    args = parser.parse_args()
    if args.quick:
        args.records, args.records_per_object, args.reads = 20_000, 500, 1
        args.seconds, args.warmup, args.rounds = 3.0, 1.0, 1
    if shutil.which("hey") is None:
        log("error: this benchmark needs `hey`, the HTTP load generator: apt-get install hey")
        return 2
    _, _, modules = load_project()
    config = modules["config"]
    run_id = uuid.uuid4().hex
    os.environ[MARKER] = run_id
    work = Path(tempfile.mkdtemp(prefix="shared-state-benchmark-"))
    load_before = os.getloadavg()[0]
    try:
        with moto_server(work) as endpoint:
            report = window_read(config, endpoint, work, args)
            report |= serving_cost(config, endpoint, work, args)
    finally:
        clean_up(MARKER, run_id, work, args.keep)
    report |= verdicts(report, GOALS)
    report.update(
        quick=args.quick,
        cpu_count=os.cpu_count(),
        load_average={"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    moto = Path(sys.executable).parent / "moto_server"
    if moto.exists():  # the generator's environment: the inner run, in the project's, inherits the path
        os.environ.setdefault(MOTO, str(moto))
    run(main, needs_model=True)
