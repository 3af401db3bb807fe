"""The retrain latency benchmark (P6) runs from the generator's checkout in the session's default project
(benchmark_project: installed and trained once, passed as --project-dir).

Its quick mode is one round on one fresh Prefect server: the monitor deployment's run on a shifted batch
must make the retrain trigger start a retrain run (created by an automation; the benchmark cancels it once
started), and the floor deployment's copy of that trigger must start its trivial run. The P6 goal itself
(ratio_to_floor <= 2) is not asserted here: it needs the full run on a quiet machine
(`uv run python benchmarks/retrain_latency.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ANSWER_SETS, REPO, explain, goals_judged
from test_serving_benchmark import installed_project, processes_under, quick_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

KEYS = {"seconds", "floor_seconds", "ratio_to_floor"}


def model_versions(root: Path, model: str) -> set[str]:
    """The versions of `model` in the project's own store (.state/bentoml, the default)."""
    store = root / ".state" / "bentoml" / "models" / model
    return {p.name for p in store.iterdir() if p.is_dir() and p.name != "latest"} if store.exists() else set()


@pytest.fixture(scope="module")
def benchmark(benchmark_project) -> tuple[dict, Path]:
    """The quick run's report and the session's project it ran in (its Prefect servers' homes are the
    benchmark's own temporary folders)."""
    return quick_run("retrain_latency", benchmark_project), benchmark_project


def test_reports_seconds_floor_and_ratio(benchmark):
    report, _ = benchmark
    assert report.keys() >= KEYS, report
    assert report["seconds"] > 0 and report["floor_seconds"] > 0, report
    assert isinstance(report["ratio_to_floor"], float), report
    goals_judged(report, {"ratio_to_floor"})
    assert len(report["rounds"]) == 1
    assert report["trigger"]["within"] == ANSWER_SETS["default"].get("retrain_cooldown_seconds", 3600)


def test_the_drift_event_started_a_retrain_run(benchmark):
    report, _ = benchmark
    (round_,) = report["rounds"]
    assert round_["monitor_run"]["state"] == "COMPLETED", round_
    retrain = round_["retrain_run"]
    assert retrain["created_by"] == "AUTOMATION", retrain
    # The trigger rendered its parameters from the monitor's event, as it does in production.
    assert 0 < retrain["parameters"]["drift_share"] <= 1, retrain
    assert all(value is not None and value >= 0 for value in round_["phases"].values()), round_


def test_no_model_is_trained_and_no_process_is_left(benchmark):
    report, project_dir = benchmark
    project = installed_project(project_dir)
    assert report["rounds"][0]["retrain_run"]["final_state"] == "CANCELLED", report["rounds"][0]
    # The one model is the production model the benchmark trained before it measured.
    name, version = report["model"].split(":")
    assert model_versions(project.root, name) == {version}
    assert processes_under(project.root) == []


def test_without_a_production_model_it_says_to_train(benchmark, tmp_path):
    """The measurement itself, run inside the project (BENCHMARK_PROJECT) with an empty model store and an
    empty shared store (where the production alias lives)."""
    project = installed_project(benchmark[1])
    script = str(REPO / "benchmarks" / "retrain_latency.py")
    result = project.run(
        "uv",
        "run",
        "--no-sync",
        "python",
        script,
        "--quick",
        timeout=300,
        BENCHMARK_PROJECT=str(project.root),
        BENTOML_HOME=str(tmp_path / "empty-store"),
        **{f"{project.package.upper()}_STORAGE__URL": str(tmp_path / "empty-shared-store")},
    )
    assert result.returncode == 2, explain(result)
    assert "needs a production model" in result.stderr and "train" in result.stderr, explain(result)
