"""The generated project's serving benchmark runs in an installed, trained project and reports its keys.

Its quick mode checks the wiring (three servers started and stopped, hey's summary read, the in-process
limit measured) and that the service answered every request; it does not check the P3 timing goals, which
need the full run on a quiet machine (`uv run python benchmarks/serving.py` in a project).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ANSWER_SETS, explain, install_project, require_tool

pytestmark = pytest.mark.slow

KEYS = {
    "rps",
    "p50_ms",
    "p99_ms",
    "ratio_to_trivial",
    "ratio_to_fastapi",
    "ratio_to_batched_limit",
    "p99_ratio_to_trivial",
    "non_2xx",
    "rss_mb_per_worker",
}
GOALS = {"ratio_to_trivial", "ratio_to_fastapi", "p99_ratio_to_trivial", "non_2xx"}


def processes_under(root: Path) -> list[str]:
    """Command lines of running processes that use the project's folder (its virtualenv's Python)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory, prefect_home) -> tuple[dict, Path]:
    require_tool("hey")  # the HTTP load generator the benchmark drives
    project = install_project(ANSWER_SETS["default"], tmp_path_factory.mktemp("serving-bench"), prefect_home)
    trained = project.cli("train", "--n-trials", "3")
    assert trained.returncode == 0, explain(trained)
    result = project.run("uv", "run", "python", "benchmarks/serving.py", "--quick", timeout=900)
    assert result.returncode == 0, explain(result)
    return json.loads(result.stdout.strip().splitlines()[-1]), project.root


def test_reports_every_key_and_a_verdict_per_goal(benchmark):
    report, _ = benchmark
    assert report.keys() >= KEYS, report
    assert set(report["goal_met"]) == GOALS
    assert all(isinstance(report[key], int | float) for key in KEYS), report


def test_every_variant_answered(benchmark):
    report, _ = benchmark
    variants = report["variants"]
    for name in ("service", "fastapi", "trivial"):
        assert variants[name]["rps"] > 0, variants[name]
    assert variants["batched_predict"]["rows_per_s"] > 0
    assert variants["service"]["workers_found"] == report["settings"]["workers"]


def test_the_service_answered_every_request(benchmark):
    report, _ = benchmark
    assert report["non_2xx"] == 0, report["variants"]["service"]


def test_no_server_is_left_running(benchmark):
    _, root = benchmark
    assert processes_under(root) == []
