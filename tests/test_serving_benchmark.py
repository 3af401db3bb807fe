"""The generated project's serving and soak benchmarks run in an installed, trained project and report
their keys.

Their quick modes check the wiring (servers started and stopped, hey's summary read, the in-process limit
measured; the soak's log rotations and its monitor run) and that the service answered every request and
logged every answer; they do not check the P3 timing goals or the soak's memory goal, which need the full
runs on a quiet machine (`uv run python benchmarks/serving.py`, `benchmarks/soak.py` in a project).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ANSWER_SETS, Project, explain, install_project, require_tool

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
def trained(tmp_path_factory, prefect_home) -> Project:
    require_tool("hey")  # the HTTP load generator both benchmarks drive
    project = install_project(ANSWER_SETS["default"], tmp_path_factory.mktemp("serving-bench"), prefect_home)
    result = project.cli("train", "--n-trials", "3")
    assert result.returncode == 0, explain(result)
    return project


def quick_run(project: Project, name: str) -> dict:
    """`benchmarks/<name>.py --quick` in the project; the JSON object it prints last."""
    result = project.run("uv", "run", "python", f"benchmarks/{name}.py", "--quick", timeout=900)
    assert result.returncode == 0, explain(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def benchmark(trained) -> tuple[dict, Path]:
    return quick_run(trained, "serving"), trained.root


@pytest.fixture(scope="module")
def soak(trained) -> tuple[dict, Path]:
    return quick_run(trained, "soak"), trained.root


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


def test_the_soak_logs_every_answer_across_rotations_and_monitors_the_log(soak):
    report, root = soak
    assert report["answers"] > 0 and report["non_2xx"] == 0, report
    assert report["accounted"] is True, report  # answers == records + dropped
    assert report["rotations"] >= 1, report
    assert report["monitor_exit_code"] == 0 and report["monitor_rows"] > 0, report
    assert report["rss_mb_start"] > 0 and report["rss_mb_end"] > 0, report
    assert processes_under(root) == []
