"""The generated project's own benchmarks run in a freshly installed project and report what they promise.

One default project is rendered with its tasks (`uv lock`) and installed with `uv sync`; each benchmark
runs in its quick mode, which checks the wiring and the verdicts, not the timing goals (those need the
full sizes: `uv run python benchmarks/<name>.py` in a project).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ANSWER_SETS, explain, find_python, render, run, subprocess_env

pytestmark = pytest.mark.slow

DRIFT_KEYS = {
    "seconds_ours",
    "seconds_evidently_default",
    "seconds_ks",
    "ratio_to_ks",
    "verdicts_match",
    "peak_rss_ratio",
    "goal_p4_met",
    "goal_p7_met",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("bench")
    root = render(ANSWER_SETS["default"], home / "project", run_tasks=True)
    interpreter = find_python("3.11")
    env = subprocess_env(
        BENTOML_HOME=str(home / "bentoml"), **({"UV_PYTHON": interpreter} if interpreter else {})
    )
    synced = run(["uv", "sync"], cwd=root, env=env, timeout=900)
    assert synced.returncode == 0, explain(synced)
    return root, env


def test_drift_benchmark_quick_reports_matching_verdicts(project):
    root, env = project
    result = run(["uv", "run", "python", "benchmarks/drift.py", "--quick"], cwd=root, env=env, timeout=900)
    assert result.returncode == 0, explain(result)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= DRIFT_KEYS, explain(result)
    assert report["verdicts_match"] is True, report
    assert report["verdicts_as_designed"] is True, report
    assert report["seconds_ours"] > 0 and report["seconds_ks"] > 0 and report["peak_rss_ratio"] >= 0
