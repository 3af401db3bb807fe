"""Serving throughput and latency of the production model: `python -m <package> bench` (the service alone)
and, with --compare, benchmark P3 (the generator's benchmarks/serving.py runs it in a project of its own).

Needs `hey`, the HTTP load generator (Debian/Ubuntu: `apt-get install hey`), and a production model
(`python -m <package> train` promotes one).

Goals P3 (with --compare): ratio_to_trivial >= 0.8, ratio_to_fastapi >= 4, p99_ratio_to_trivial <= 2,
non_2xx == 0.

Every variant gets the same load on loopback: `hey` with --concurrency clients (32) sending one real row
of the training data, as fast as each gets its answers, for --seconds (15) after an untimed warm-up:
- `service`: the project's service (`python -m <package> serve`, the production model, settings.toml's
  [serving] workers / max_batch_size / max_latency_ms / runtime), POST /predict_one, which goes through
  the adaptive batcher; with runtime "auto" it predicts with ONNX Runtime when the pipeline converts and
  agrees with scikit-learn (variants.service.runtime says which ran). Its request log goes to a
  temporary folder (not the project's logs/, which the monitor flow reads), and it asks for an API key of
  the run's own (serving.api_key_env), which every variant's requests carry.
With --compare, four more:
- `fastapi`: FastAPI + uvicorn with the same number of workers, the same production pipeline loaded with
  bentoml.sklearn.load_model, the same request and answer types, one predict_proba per request: what a
  plain hand-written endpoint does.
- `trivial`: a BentoML service with the same workers, request and answer types whose endpoint returns
  a constant without touching the model: what BentoML itself can answer on this machine, with its defaults.
- `trivial_untraced`: the same with the service's tracing setting (its prediction routes are left out of
  BentoML's OpenTelemetry middleware while no trace exporter is configured: serving/service.py's
  `untraced_routes`). `ratio_to_trivial_untraced` (no goal) is then what the service's own layers cost.
- `batched_predict`: rows/s of the bare pipeline's predict_proba (predict for regression) in this
  process, on batches of serving.max_batch_size real rows: the batcher's upper limit.
(The two comparison servers live in serving_apps.py, beside this module.)

Keys: `rps` (2xx answers per second), `p50_ms`, `p99_ms` and `non_2xx` (non-2xx answers plus failed
connections: an overloaded batcher sheds load with 503s, which are counted here, never hidden) are the
service's; `rss_mb_per_worker` is the largest resident memory of its worker processes after the run (each
worker's in variants.service). With --compare, `ratio_to_trivial`, `ratio_to_fastapi` and
`ratio_to_batched_limit` divide its rps by the other variants' (and `ratio_to_trivial_untraced` by the
untraced trivial's); `p99_ratio_to_trivial` divides its p99;
`goal_met` holds each goal's verdict (without --compare these keys are absent). Latencies are hey's, over
every answer (non-2xx included). `variants` holds each variant's figures.

The load generator runs on the same machine as the server, and a shared machine moves these figures
between runs: `load_average` (1 min, before and after) says how busy it was; compare variants of one run.
Every process started is stopped (its process group, then any descendant left: BentoML's workers start
sessions of their own). The last line printed is one JSON object; the exit code is non-zero only on
errors (hey missing, no production model, a server that does not start), never because a goal was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ..local.processes import spawn, stop_group
from .goals import verdicts

if TYPE_CHECKING:
    from ..config import Settings

# Nothing here reads the project at import time (benchmarks/_common.py imports it before binding one).
HOST = "127.0.0.1"
ENDPOINT = "/predict_one"
GOALS = {
    "ratio_to_trivial": (">=", 0.8),
    "ratio_to_fastapi": (">=", 4.0),
    "p99_ratio_to_trivial": ("<=", 2.0),
    "non_2xx": ("<=", 0),
}
MARKER = "SERVING_BENCHMARK_RUN"  # in every server's environment, so leftovers can be found by it
BENTOML_WORKER = "_bentoml_impl.worker"
START_TIMEOUT = 300.0
APPS = "ml_lifecycle._internal.bench.serving_apps"  # the two comparison servers
PACKAGE_VARIABLE = "ML_LIFECYCLE_BENCH_PACKAGE"  # tells serving_apps which project to bind


def log(message: str) -> None:
    """Progress goes to stderr: stdout's last line is the JSON report."""
    print(message, file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def kill_leftovers(marker: str, run_id: str) -> int:
    """Stop every process whose environment carries `marker=run_id` (servers, workers and flow runs start
    sessions of their own, which stopping a process group does not reach); returns how many there were."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(marker) == run_id:
                proc.terminate()
                found.append(proc)
    _, alive = psutil.wait_procs(found, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(found)


def clean_up(marker: str, run_id: str, work: Path, keep: bool) -> None:
    """After a run: stop what is left of it, and remove its work folder unless asked to keep it."""
    leftovers = kill_leftovers(marker, run_id)
    if leftovers:
        log(f"stopped {leftovers} leftover process(es)")
    if keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def own_store(settings: Settings, tag: str, folder: Path) -> Path:
    """A store of the benchmark's own holding the production model and its alias: the service under load
    logs its requests there, never into the project's request log, whose window the monitor and training
    read (synthetic traffic there would pass for production's)."""
    from ..registry import aliases
    from ..registry.store import model_key
    from ..storage import Storage, open_storage

    source, own = open_storage(settings), Storage(folder.as_uri())
    for key in (aliases.key(settings), model_key(tag)):
        data = source.read_bytes(key)
        if data is not None:
            own.write(key, data)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- load generation -------------------------------------------------------------------------------------


def hey(url: str, body: Path, seconds: float, concurrency: int, headers: dict[str, str] | None = None) -> str:
    command = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-m", "POST"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    command += ["-T", "application/json", "-D", str(body), url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"hey failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def parse_hey(text: str) -> dict:
    """hey's summary: wall time, latency percentiles (s), answers per status code and failed requests."""
    total = re.search(r"Total:\s+([\d.]+) secs", text)
    if total is None:
        raise RuntimeError(f"cannot read hey's summary:\n{text}")
    percentiles = {int(p): float(s) for p, s in re.findall(r"(\d+)% in ([\d.]+) secs", text)}
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("Status code distribution"):
            section = statuses
        elif line.startswith("Error distribution"):
            section = errors
        elif section is not None and (match := re.match(r"\s+\[(\d+)\]\s+(.*)", line)):
            if section is statuses:
                statuses[match.group(1)] = int(match.group(2).split()[0])
            else:
                errors[match.group(2).strip()[:200]] = int(match.group(1))
    return {
        "seconds": float(total.group(1)),
        "percentiles": percentiles,
        "statuses": statuses,
        "errors": errors,
    }


def summarize(parsed: dict) -> dict:
    ok = sum(n for code, n in parsed["statuses"].items() if code.startswith("2"))
    non_ok = sum(n for code, n in parsed["statuses"].items() if not code.startswith("2"))
    failed = sum(parsed["errors"].values())
    p = parsed["percentiles"]
    return {
        "rps": round(ok / parsed["seconds"], 1),
        "p50_ms": round(p[50] * 1000, 1) if 50 in p else None,
        "p99_ms": round(p[99] * 1000, 1) if 99 in p else None,
        "non_2xx": non_ok + failed,
        "answers": ok + non_ok,
        "status_codes": parsed["statuses"],
        "failed_requests": parsed["errors"],
        "seconds": parsed["seconds"],
    }


# --- servers ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    log: Path
    base: str

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.process.pid).children(recursive=True)
        return []

    def workers(self) -> list[psutil.Process]:
        """The processes that answer requests: BentoML's workers, uvicorn's workers, else the server."""
        found = []
        for child in self.descendants():
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(child.cmdline())
                if BENTOML_WORKER in cmdline or "multiprocessing.spawn" in cmdline:
                    found.append(child)
        return found or [psutil.Process(self.process.pid)]

    def rss_mb(self) -> list[float]:
        sizes = []
        for worker in self.workers():
            with contextlib.suppress(psutil.Error):
                sizes.append(round(worker.memory_info().rss / 2**20, 1))
        return sizes


def ready(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
    return False


@contextlib.contextmanager
def server(
    name: str, command: list[str], env: dict[str, str], port: int, logs: Path, cwd: Path
) -> Iterator[Server]:
    """Start a server in its own process group, in the project's folder `cwd`; yield once /readyz answers
    200; stop it and its workers."""
    path = logs / f"{name}.log"
    process = spawn(command, log=path, env=env, cwd=cwd)
    running = Server(name, process, path, f"http://{HOST}:{port}")
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready(running.base + "/readyz"):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{running.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready within {START_TIMEOUT:.0f} s:\n{running.tail()}")
            time.sleep(0.5)
        seen.update((p.pid, p) for p in running.descendants())
        yield running
    finally:
        seen.update((p.pid, p) for p in running.descendants())
        stop(process, list(seen.values()))


def stop(process: subprocess.Popen, children: list[psutil.Process], grace: float = 30) -> None:
    stop_group(process, grace)
    # Workers in sessions of their own: SIGTERM (the server normally stopped them already), then SIGKILL.
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


# --- the variants ----------------------------------------------------------------------------------------


def measure(
    running: Server,
    body: Path,
    seconds: float,
    warmup: float,
    concurrency: int,
    headers: dict[str, str] | None = None,
) -> dict:
    """hey's figures for `running` under the load; `headers` go with every request (the API key)."""
    url = running.base + ENDPOINT
    headers = headers or {}
    request = urllib.request.Request(
        url, data=body.read_bytes(), headers={"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 200:
            raise RuntimeError(f"{running.name}: {url} answered {response.status}")
    if warmup > 0:
        hey(url, body, warmup, concurrency, headers)
    log(f"{running.name}: {concurrency} clients for {seconds:g} s")
    figures = summarize(parse_hey(hey(url, body, seconds, concurrency, headers)))
    rss = running.rss_mb()
    figures.update(rss_mb_workers=rss, workers_found=len(rss))
    log(
        f"{running.name}: {figures['rps']} requests/s, p50 {figures['p50_ms']} ms, "
        f"p99 {figures['p99_ms']} ms, status {figures['status_codes']}, failed {figures['failed_requests']}"
    )
    return figures


def batch_sizes(base: str, package: str) -> dict:
    """The adaptive batcher's batch sizes (summed over workers) and the runtime serving the model, from the
    service's /metrics."""
    total = count = 0.0
    runtimes: set[str] = set()
    with contextlib.suppress(OSError), urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            found = re.match(rf'{package}_model_info\b.*runtime="(\w+)"', line)
            if found:
                runtimes.add(found.group(1))
            if line.startswith(f"{package}_batch_size_sum"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith(f"{package}_batch_size_count"):
                count += float(line.rsplit(" ", 1)[1])
    return {
        "batches": int(count),
        "mean_batch_size": round(total / count, 1) if count else None,
        "runtime": ",".join(sorted(runtimes)) or None,
    }


def batched_limit(settings, frame, seconds: float) -> dict:
    """rows/s of the bare production pipeline on batches of max_batch_size rows, in this process."""
    import bentoml

    from .. import tables
    from ..registry import aliases

    model = bentoml.models.get(aliases.production_tag(settings))
    pipeline = bentoml.sklearn.load_model(model)
    size = settings.serving.max_batch_size
    batch = tables.conform(
        frame.sample(size, replace=len(frame) < size, random_state=0), model.info.metadata["feature_schema"]
    )
    call = (
        pipeline.predict_proba if model.info.metadata["task_type"] == "classification" else pipeline.predict
    )
    call(batch)
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        call(batch)
        calls += 1
    return {
        "rows_per_s": round(calls * size / elapsed, 1),
        "batch_size": size,
        "ms_per_batch": round(elapsed / calls * 1000, 2),
        "seconds": round(elapsed, 1),
    }


# --- the report ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m <package> bench`."""
    parser.add_argument("--seconds", type=float, default=15, help="measured load per variant (default 15)")
    parser.add_argument("--warmup", type=float, default=3, help="untimed load before each (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also plain FastAPI, a trivial BentoML service and the bare pipeline in-process (benchmark P3)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (3 s per variant, 1 s warm-up)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the server logs")


def comparison_commands(workers: str) -> dict[str, list[str]]:
    """The comparison servers of --compare; "{port}" is filled in when each starts."""
    return {
        "fastapi": [
            sys.executable, "-m", "uvicorn", "--factory", f"{APPS}:fastapi_app",
            "--host", HOST, "--port", "{port}", "--workers", workers,
        ],
        "trivial": [
            sys.executable, "-m", "bentoml", "serve", f"{APPS}:Trivial", "--host", HOST, "--port", "{port}",
        ],
        "trivial_untraced": [
            sys.executable, "-m", "bentoml", "serve", f"{APPS}:TrivialUntraced", "--host", HOST,
            "--port", "{port}",
        ],
    }  # fmt: skip


def bench(args: argparse.Namespace) -> int:
    """Measure the service (and with args.compare the other variants); print the JSON report last."""
    if args.quick:
        args.seconds, args.warmup = 3.0, 1.0
    if shutil.which("hey") is None:
        log("error: this benchmark needs `hey`, the HTTP load generator: apt-get install hey")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers are stopped on SIGTERM too

    from ..config import ENV_PREFIX, PACKAGE, get_settings
    from ..registry.aliases import production_tag
    from ..training.validation import load_dataset

    settings = get_settings()
    serving = settings.serving
    try:
        tag = production_tag(settings)
    except LookupError as exc:
        log(f"error: this benchmark needs a production model: {exc}")
        return 2

    run_id = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="serving-benchmark-"))
    logs = work / "logs"
    logs.mkdir()
    frame = load_dataset(settings).features
    body = work / "body.json"
    body.write_text(json.dumps({"row": json.loads(frame.head(1).to_json(orient="records"))[0]}))

    # Every guard on: the service asks for an API key of the run's own, which every variant's requests carry
    # (the comparison servers ignore it).
    env = {k: v for k, v in os.environ.items() if k != serving.api_key_env}
    auth: dict[str, str] = {}
    if serving.api_key_env:
        env[serving.api_key_env] = secrets.token_urlsafe(24)
        auth = {"Authorization": f"Bearer {env[serving.api_key_env]}"}
    env.update({MARKER: run_id, PACKAGE_VARIABLE: PACKAGE})
    env[f"{ENV_PREFIX}STORAGE__URL"] = str(own_store(settings, tag, work / "store"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    load_before = os.getloadavg()[0]
    log(
        f"model {tag}; workers {serving.workers}, max_batch_size {serving.max_batch_size}, "
        f"max_latency_ms {serving.max_latency_ms}; logs in {logs}"
    )

    variants: dict[str, dict] = {}
    commands = {"service": [sys.executable, "-m", PACKAGE, "serve", "--host", HOST, "--port", "{port}"]}
    try:
        if args.compare:
            log(f"batched_predict: {min(args.seconds, 5):g} s in this process")
            variants["batched_predict"] = batched_limit(settings, frame, min(args.seconds, 5))
            commands |= comparison_commands(str(serving.workers))
        for name, template in commands.items():
            port = free_port()
            command = [part.replace("{port}", str(port)) for part in template]
            log(f"{name}: starting")
            with server(name, command, env, port, logs, settings.root) as running:
                variants[name] = measure(running, body, args.seconds, args.warmup, args.concurrency, auth)
                if name == "service":
                    variants[name].update(batch_sizes(running.base, PACKAGE))
    finally:
        clean_up(MARKER, run_id, work, args.keep)

    ours = variants["service"]
    report: dict = {
        "rps": ours["rps"],
        "p50_ms": ours["p50_ms"],
        "p99_ms": ours["p99_ms"],
        "non_2xx": ours["non_2xx"],
        "rss_mb_per_worker": max(ours["rss_mb_workers"], default=None),
    }
    if args.compare:
        fastapi, trivial = variants["fastapi"], variants["trivial"]
        report |= {
            "ratio_to_trivial": ratio(ours["rps"], trivial["rps"]),
            # No goal: what the service's own layers cost, next to BentoML configured as the service is.
            "ratio_to_trivial_untraced": ratio(ours["rps"], variants["trivial_untraced"]["rps"]),
            "ratio_to_fastapi": ratio(ours["rps"], fastapi["rps"]),
            "ratio_to_batched_limit": ratio(ours["rps"], variants["batched_predict"]["rows_per_s"], 4),
            "p99_ratio_to_trivial": ratio(ours["p99_ms"], trivial["p99_ms"]),
        }
        report |= verdicts(report, GOALS)
    report.update(
        variants=variants,
        model=tag,
        settings={
            "workers": serving.workers,
            "max_batch_size": serving.max_batch_size,
            "max_latency_ms": serving.max_latency_ms,
        },
        load={"endpoint": ENDPOINT, "concurrency": args.concurrency, "seconds": args.seconds},
        cpu_count=os.cpu_count(),
        load_average={"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    )
    print(json.dumps(report))
    return 0
