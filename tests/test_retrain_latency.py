"""The generated project's retrain latency benchmark (P6) runs in an installed, trained project.

Its quick mode is one round on one fresh Prefect server: the monitor deployment's run on a shifted batch
must make the retrain trigger start a retrain run (created by an automation; the benchmark cancels it once
started), and the floor deployment's copy of that trigger must start its trivial run. The P6 goal itself
(ratio_to_floor <= 2) is not asserted here: it needs the full run on a quiet machine
(`uv run python benchmarks/retrain_latency.py` in a project).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ANSWER_SETS, Project, explain, install_project
from test_serving_benchmark import processes_under

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

KEYS = {"seconds", "floor_seconds", "ratio_to_floor"}
BENCHMARK = ("uv", "run", "python", "benchmarks/retrain_latency.py", "--quick")


def model_versions(project: Project) -> set[str]:
    """The versions of the project's model in its own store (install_project gives it one)."""
    store = Path(project.env["BENTOML_HOME"]) / "models" / project.package
    return {p.name for p in store.iterdir() if p.is_dir() and p.name != "latest"} if store.exists() else set()


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_home) -> Project:
    home = tmp_path_factory.mktemp("retrain-latency")
    project = install_project(ANSWER_SETS["default"], home, prefect_home)
    trained = project.cli("train", "--n-trials", "3")
    assert trained.returncode == 0, explain(trained)
    return project


@pytest.fixture(scope="module")
def benchmark(project) -> tuple[dict, set[str]]:
    """The quick run's report, and the model versions in the store before it ran."""
    before = model_versions(project)
    result = project.run(*BENCHMARK, timeout=900)
    assert result.returncode == 0, explain(result)
    return json.loads(result.stdout.strip().splitlines()[-1]), before


def test_reports_seconds_floor_and_ratio(benchmark):
    report, _ = benchmark
    assert report.keys() >= KEYS, report
    assert report["seconds"] > 0 and report["floor_seconds"] > 0, report
    assert isinstance(report["ratio_to_floor"], float), report
    assert isinstance(report["goal_met"], bool)
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


def test_no_model_is_trained_and_no_process_is_left(benchmark, project):
    report, before = benchmark
    assert report["rounds"][0]["retrain_run"]["final_state"] == "CANCELLED", report["rounds"][0]
    assert model_versions(project) == before
    assert processes_under(project.root) == []


def test_without_a_production_model_it_says_to_train(project, tmp_path):
    result = project.run(*BENCHMARK, timeout=300, BENTOML_HOME=str(tmp_path / "empty-store"))
    assert result.returncode == 2, explain(result)
    assert "needs a production model" in result.stderr and "train" in result.stderr, explain(result)
