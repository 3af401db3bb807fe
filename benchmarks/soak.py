"""Soak: the service under steady load for minutes, across request-log rotations, with a monitor run in the
middle. Does every answer leave a record (or a counted drop), and does the worker's memory stay flat?

    uv run python benchmarks/soak.py [--minutes 10] [--concurrency 64] [--quick] [--keep]

Needs `hey` (apt-get install hey) and a production model (`python -m <package> train` promotes one).

`python -m <package> serve` gets single-row POST /predict_one requests from `hey` with --concurrency clients
for --minutes, its request log in a temporary folder, rotated every `--rotate-mb` MB (small, so the soak
crosses several rotations) and with enough backups that no record ages out during the run. Halfway,
`python -m <package> monitor` reads that log's window, as the scheduled monitor would.

Keys: `answers` (2xx answers hey saw), `records` (lines in the log files, every worker's and every
rotation's), `dropped` (the service's request_log_dropped_total), `accounted` (answers == records + dropped),
`rotations` (files the log rotated into), `rss_mb_start` / `rss_mb_end` (the workers' resident memory after
the first tenth of the run and at its end) and `rss_growth` (end / start - 1; goal under 0.05),
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

from _common import clean_up, load_project, log, production_tag, run
from ml_lifecycle._internal.bench.serving import HOST, free_port, hey, parse_hey, server, summarize

MARKER = "SOAK_BENCHMARK_RUN"
RSS_GOAL = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10, help="length of the load (default 10)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--rotate-mb", type=float, default=2, help="request log rotation size (default 2)")
    parser.add_argument("--quick", action="store_true", help="a 30 s run with 16 clients (the wiring only)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with logs")
    args = parser.parse_args(argv)
    if args.quick:
        # Rotation every 100 KB (about 300 records): the quick run crosses rotations on a slow machine, and
        # on a fast one (about 1,000 answers a second) the writer is not buried in rotations: each renames
        # every backup, and at 20 KB a quiet machine's 31,000 answers made 500 files and 20,000 drops.
        args.minutes, args.concurrency, args.rotate_mb = 0.5, 16, 0.1
    return args


def metric(base: str, name: str) -> float:
    """The sum of a counter over the service's workers, from /metrics."""
    total = 0.0
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if re.match(re.escape(name) + r"(_total)?(\{.*\})? ", line):
                total += float(line.rsplit(" ", 1)[1])
    return total


def count_records(files: list[Path]) -> int:
    return sum(1 for path in files for line in path.read_text(errors="replace").splitlines() if line.strip())


def drained(base: str, package: str, records: Callable[[], int], answers: int, timeout: float = 120) -> float:
    """The records dropped, once the writer has drained its buffer off the request path: every answer is
    then a record on disk or a drop (or the deadline has passed, and the report shows what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        dropped = metric(base, f"{package}_request_log_dropped")
        try:
            written = records()
        except FileNotFoundError:  # a rotation renamed a file between listing and reading it
            written = 0
        if written + dropped >= answers or time.monotonic() > deadline:
            return dropped
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("hey") is None:
        log("error: this benchmark needs `hey`, the HTTP load generator: apt-get install hey")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    package, settings, modules = load_project("training.validation", "serving.request_log")
    if production_tag(settings, modules["aliases"]) is None:
        return 2
    run_id, work = uuid.uuid4().hex, Path(tempfile.mkdtemp(prefix="soak-benchmark-"))
    (work / "logs").mkdir()
    request_log, log_files = work / "requests.jsonl", modules["request_log"].log_files
    frame = modules["validation"].load_dataset(settings).features
    body = work / "body.json"
    body.write_text(json.dumps({"row": json.loads(frame.head(1).to_json(orient="records"))[0]}))

    prefix = modules["config"].ENV_PREFIX
    env = {k: v for k, v in os.environ.items() if k != settings.serving.api_key_env}
    env.update(
        {
            MARKER: run_id,
            f"{prefix}SERVING__REQUEST_LOG_PATH": str(request_log),
            f"{prefix}SERVING__REQUEST_LOG_MAX_BYTES": str(int(args.rotate_mb * 2**20)),
            f"{prefix}SERVING__REQUEST_LOG_BACKUPS": "10000",
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
            dropped = drained(running.base, package, lambda: count_records(log_files(request_log)), answers)
        files = log_files(request_log)  # the service has stopped: every file is closed
        records = count_records(files)
        report = {
            "answers": answers,
            "records": records,
            "dropped": int(dropped),
            "accounted": answers == records + int(dropped),
            "rotations": max(len(files) - 1, 0),
            "rss_mb_start": round(rss_start, 1),
            "rss_mb_end": round(rss_end, 1),
            "rss_growth": round(rss_end / rss_start - 1, 4) if rss_start else None,
            "rss_goal_met": bool(rss_start) and rss_end / rss_start - 1 < RSS_GOAL,
            "monitor_exit_code": monitored.returncode,
            "monitor_rows": int(rows.group(1)) if rows else None,
            "non_2xx": figures["non_2xx"],
            "rps": figures["rps"],
            "p99_ms": figures["p99_ms"],
            "minutes": args.minutes,
            "concurrency": args.concurrency,
            "rotate_mb": args.rotate_mb,
        }
        if monitored.returncode != 0:
            log(f"monitor failed:\n{monitored.stdout[-2000:]}\n{monitored.stderr[-2000:]}")
    finally:
        clean_up(MARKER, run_id, work, args.keep)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    run(main, needs_model=True)
