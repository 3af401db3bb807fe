"""Benchmark P9 (benchmarks/shared_state.py) in its quick mode, in the session's default project
(benchmark_project): the window read from moto's S3 server and from a folder returns every record, and the
service answers P3's load with its request log flushed to either. The quick mode checks the wiring and the
keys, not the goals (`uv run python benchmarks/shared_state.py` on a quiet machine does).
"""

from __future__ import annotations

import pytest
from conftest import goals_judged, require_tool
from test_serving_benchmark import quick_run

pytestmark = pytest.mark.slow

KEYS = {
    "records",
    "objects",
    "seconds_local",
    "seconds_s3",
    "ratio_to_local",
    "rps_local",
    "rps_s3",
    "throughput_ratio",
    "request_log_objects_s3",
    "load_average",
}


def test_shared_state_benchmark_quick_reads_every_record_from_both_stores(benchmark_project):
    require_tool("hey")  # the second half drives the service with it
    report = quick_run("shared_state", benchmark_project)
    assert set(report) >= KEYS, report
    assert report["quick"] is True and report["records"] == 20_000, report
    assert report["objects"] >= 40, report  # two replicas, 500 records a flush
    assert report["seconds_local"] > 0 and report["seconds_s3"] > 0 and report["ratio_to_local"] > 0
    assert report["rps_local"] > 0 and report["rps_s3"] > 0 and report["throughput_ratio"] > 0
    assert report["request_log_objects_s3"] > 0, report  # the S3 service really flushed to the bucket
    rounds = report["serving_rounds"]
    assert all(r["non_2xx"] == 0 for name in ("local", "s3") for r in rounds[name]), rounds
    goals_judged(report, {"ratio_to_local", "throughput_ratio"})
