"""Soak: the service under steady load for minutes, across many request-log flushes, with a monitor run in the
middle. Does every answer leave a record (or a counted drop), and does the worker's memory stay flat?

    uv run python benchmarks/soak.py [--minutes 10] [--concurrency 64] [--quick] [--keep]

Needs `hey` (apt-get install hey) and a production model (`python -m <package> train` promotes one).

`python -m <package> serve` gets single-row POST /predict_one requests from `hey` with --concurrency clients
for --minutes. Its request log goes to the project's store (storage.url) under a replica name of this run's
own, flushed every `--flush-seconds` (short, so the soak crosses many flushes); the run's objects are deleted
at the end (unless --keep), so the project's monitor never sees the soak's traffic. Halfway,
`python -m <package> monitor` reads the window, as the scheduled monitor would.

Keys: `answers` (2xx answers hey saw), `records` (lines in this run's objects, every worker's), `dropped`
(the service's request_log_dropped_total), `accounted` (answers == records + dropped), `objects` (objects
the log was written as), `rss_mb_start` / `rss_mb_end` (the workers' resident memory after
the first tenth of the run and at its end) and `rss_growth` (end / start - 1; goal at most 0.05),
`monitor_exit_code` and `monitor_rows`, `non_2xx`, `rps`. The last line printed is one JSON object; the exit
code is non-zero only on errors (hey missing, no model, a server that does not start), never because a goal
was missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import clean_up, load_project, log, production_tag, run
from ml_lifecycle._internal.bench.goals import verdicts
from ml_lifecycle._internal.bench.serving import HOST, free_port, hey, parse_hey, server, summarize

MARKER = "SOAK_BENCHMARK_RUN"
GOALS = {"rss_growth": ("<=", 0.05), "accounted": ("==", True)}  # with --repeats (_repeats.py)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10, help="length of the load (default 10)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--flush-seconds", type=float, default=1, help="request log flushes (default 1 s)")
    parser.add_argument("--quick", action="store_true", help="a 30 s run with 16 clients (the wiring only)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.concurrency, args.flush_seconds = 0.5, 16, 0.5
    return args


def metric(base: str, name: str) -> float:
    """The sum of a counter over the service's workers, from /metrics."""
    total = 0.0
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if re.match(re.escape(name) + r"(_total)?(\{.*\})? ", line):
                total += float(line.rsplit(" ", 1)[1])
    return total


class RunObjects:
    """This run's request-log objects in the project's store: those named after its replica."""

    def __init__(self, store: Any, replica: str) -> None:
        self.store, self.replica = store, replica

    def keys(self) -> list[str]:
        return [
            listed.key
            for listed in self.store.list("requests")
            if listed.key.rpartition("/")[2].startswith(self.replica + "-")
        ]

    def records(self) -> int:
        return sum(
            1
            for key in self.keys()
            for line in (self.store.read_bytes(key) or b"").decode(errors="replace").splitlines()
            if line.strip()
        )

    def delete(self) -> None:
        for key in self.keys():
            self.store.delete(key)


def drained(base: str, package: str, records: Callable[[], int], answers: int, timeout: float = 120) -> float:
    """The records dropped, once the writer has drained its buffer off the request path: every answer is
    then a record on disk or a drop (or the deadline has passed, and the report shows what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        dropped = metric(base, f"{package}_request_log_dropped")
        written = records()
        if written + dropped >= answers or time.monotonic() > deadline:
            return dropped
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("hey") is None:
        log("error: this benchmark needs `hey`, the HTTP load generator: apt-get install hey")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    package, settings, modules = load_project("training.validation", "storage")
    if production_tag(settings, modules["aliases"]) is None:
        return 2
    run_id, work = uuid.uuid4().hex, Path(tempfile.mkdtemp(prefix="soak-benchmark-"))
    (work / "logs").mkdir()
    replica = f"soak-{run_id[:12]}"
    logged = RunObjects(modules["storage"].open_storage(settings), replica)
    frame = modules["validation"].load_dataset(settings).features
    body = work / "body.json"
    body.write_text(json.dumps({"row": json.loads(frame.head(1).to_json(orient="records"))[0]}))

    prefix = modules["config"].ENV_PREFIX
    env = {k: v for k, v in os.environ.items() if k != settings.serving.api_key_env}
    env.update(
        {
            MARKER: run_id,
            f"{prefix}SERVING__REPLICA": replica,
            f"{prefix}SERVING__REQUEST_LOG_FLUSH_SECONDS": str(args.flush_seconds),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    seconds = args.minutes * 60
    port = free_port()
    command = [sys.executable, "-m", package, "serve", "--host", HOST, "--port", str(port)]
    report: dict = {}
    try:
        with server("service", command, env, port, work / "logs", settings.root) as running:
            url = running.base + "/predict_one"
            with ThreadPoolExecutor(1) as pool:
                load = pool.submit(hey, url, body, seconds, args.concurrency)
                log(f"{args.concurrency} clients for {seconds:g} s against {url}")
                time.sleep(seconds / 10)
                rss_start = sum(running.rss_mb())
                time.sleep(seconds * 0.4)
                log("monitor run in the middle of the load")
                monitor = [sys.executable, "-m", package, "monitor"]
                monitored = subprocess.run(
                    monitor, env=env, cwd=settings.root, capture_output=True, text=True, timeout=900
                )
                rows = re.search(r"rows=(\d+)", monitored.stdout)
                figures = summarize(parse_hey(load.result()))
            rss_end = sum(running.rss_mb())
            answers = sum(n for code, n in figures["status_codes"].items() if code.startswith("2"))
            dropped = drained(running.base, package, logged.records, answers)
        records, objects = logged.records(), len(logged.keys())  # the service has stopped: all flushed
        report = {
            "answers": answers,
            "records": records,
            "dropped": int(dropped),
            "accounted": answers == records + int(dropped),
            "objects": objects,
            "rss_mb_start": round(rss_start, 1),
            "rss_mb_end": round(rss_end, 1),
            "rss_growth": round(rss_end / rss_start - 1, 4) if rss_start else None,
            "monitor_exit_code": monitored.returncode,
            "monitor_rows": int(rows.group(1)) if rows else None,
            "non_2xx": figures["non_2xx"],
            "rps": figures["rps"],
            "p99_ms": figures["p99_ms"],
            "minutes": args.minutes,
            "concurrency": args.concurrency,
            "flush_seconds": args.flush_seconds,
        }
        report |= verdicts(report, GOALS)
        if monitored.returncode != 0:
            log(f"monitor failed:\n{monitored.stdout[-2000:]}\n{monitored.stderr[-2000:]}")
    finally:
        clean_up(MARKER, run_id, work, args.keep)
        if not args.keep:
            logged.delete()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    run(main, needs_model=True)
