"""The serving (P3) and soak benchmarks run from the generator's checkout in the session's default project
(benchmark_project, trained once, shared through --project-dir), and report their keys; a project's own
`bench` command reports its model's serving figures with the same code.

Their quick modes check the wiring (servers started and stopped, hey's summary read, the in-process limit
measured; the soak's log flushes and its monitor run) and that the service answered every request and
logged every answer; they do not check the P3 timing goals or the soak's memory goal, which need the full
runs on a quiet machine (`uv run python benchmarks/serving.py`, `benchmarks/soak.py`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, Project, explain, goals_judged, package_of, require_tool, run, subprocess_env

pytestmark = pytest.mark.slow

SERVICE_KEYS = {"rps", "p50_ms", "p99_ms", "non_2xx", "rss_mb_per_worker"}
RATIOS = {
    "ratio_to_trivial",
    "ratio_to_trivial_untraced",
    "ratio_to_fastapi",
    "ratio_to_batched_limit",
    "p99_ratio_to_trivial",
}
KEYS = SERVICE_KEYS | RATIOS
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


def quick_run(name: str, project_dir: Path, *options: str, timeout: float = 1500) -> dict:
    """`python benchmarks/<name>.py --quick --project-dir DIR [options]` in the generator's checkout (with its
    own interpreter, not `uv run`, as tests/test_generator_benchmarks.py does); the JSON object it prints
    last."""
    command = [
        sys.executable,
        f"benchmarks/{name}.py",
        "--quick",
        "--project-dir",
        str(project_dir),
        *options,
    ]
    result = run(command, cwd=REPO, env=subprocess_env(), timeout=timeout)
    assert result.returncode == 0, explain(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


def installed_project(project_dir: Path) -> Project:
    """The project a benchmark installed under --project-dir, with the environment it ran in."""
    root = project_dir / "project"
    return Project(root, package_of(root), subprocess_env(PREFECT_HOME=str(project_dir / "prefect-home")))


@pytest.fixture(scope="module")
def project_dir(benchmark_project) -> Path:
    require_tool("hey")  # the HTTP load generator the benchmarks and `bench` drive
    return benchmark_project


@pytest.fixture(scope="module")
def benchmark(project_dir) -> tuple[dict, Path]:
    return quick_run("serving", project_dir), project_dir / "project"


@pytest.fixture(scope="module")
def soak(benchmark, project_dir) -> tuple[dict, Path]:
    return quick_run("soak", project_dir), project_dir / "project"


def test_reports_every_key_and_a_verdict_per_goal(benchmark):
    report, _ = benchmark
    assert report.keys() >= KEYS, report
    goals_judged(report, GOALS)
    assert all(isinstance(report[key], int | float) for key in KEYS), report


def test_every_variant_answered(benchmark):
    report, _ = benchmark
    variants = report["variants"]
    for name in ("service", "fastapi", "trivial", "trivial_untraced"):
        assert variants[name]["rps"] > 0, variants[name]
    assert variants["batched_predict"]["rows_per_s"] > 0
    assert variants["service"]["workers_found"] == report["settings"]["workers"]


def test_the_service_answered_every_request(benchmark):
    report, _ = benchmark
    assert report["non_2xx"] == 0, report["variants"]["service"]


def test_no_server_is_left_running(benchmark):
    _, root = benchmark
    assert processes_under(root) == []


def test_the_soak_logs_every_answer_across_flushes_and_monitors_the_log(soak):
    report, root = soak
    assert report["answers"] > 0 and report["non_2xx"] == 0, report
    assert report["accounted"] is True, report  # answers == records + dropped
    assert report["objects"] >= 2, report  # several flushes
    assert report["monitor_exit_code"] == 0 and report["monitor_rows"] > 0, report
    assert report["rss_mb_start"] > 0 and report["rss_mb_end"] > 0, report
    goals_judged(report, {"rss_growth", "accounted"})
    assert processes_under(root) == []


def test_the_projects_bench_command_measures_its_production_model(benchmark, project_dir):
    """A user's own figures: `python -m <package> bench --quick` serves the production model under load and
    reports the service's keys only (no comparison servers, so no ratios or goals). Its synthetic traffic
    stays out of the project's request log, whose window the monitor and training read."""
    project = installed_project(project_dir)
    logged_before = request_log_objects(project)
    result = project.cli("bench", "--quick", "--concurrency", "8")
    assert result.returncode == 0, explain(result)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.keys() >= SERVICE_KEYS and not report.keys() & RATIOS, report
    assert set(report["variants"]) == {"service"}, report
    assert report["rps"] > 0 and report["non_2xx"] == 0, report
    assert report["model"] == benchmark[0]["model"] and report["load"]["concurrency"] == 8, report
    assert processes_under(project.root) == []
    assert request_log_objects(project) == logged_before


def request_log_objects(project) -> set[str]:
    """The request-log objects in the project's own (folder) store."""
    folder = project.root / ".state" / "store" / "requests"
    return {str(p.relative_to(folder)) for p in folder.rglob("*.jsonl")}


def test_bench_without_a_production_model_says_to_train(benchmark, project_dir, tmp_path):
    project = installed_project(project_dir)
    empty = {"BENTOML_HOME": str(tmp_path / "empty-store")}
    empty[f"{project.package.upper()}_STORAGE__URL"] = str(tmp_path / "empty-shared-store")
    result = project.cli("bench", "--quick", **empty)
    assert result.returncode == 2, explain(result)
    assert "needs a production model" in result.stderr and "train" in result.stderr, explain(result)
