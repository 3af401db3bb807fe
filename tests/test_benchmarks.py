"""The generated project's own benchmarks run in a freshly installed project and report what they promise.

One default project is rendered with its tasks (`uv lock`) and installed with `uv sync`; each benchmark
runs in its quick mode, which checks the wiring and the verdicts, not the timing goals (those need the
full sizes: `uv run python benchmarks/<name>.py` in a project).
"""

from __future__ import annotations

import json

import pytest
from conftest import ANSWER_SETS, Project, explain, install_project

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
def project(tmp_path_factory, prefect_home) -> Project:
    return install_project(ANSWER_SETS["default"], tmp_path_factory.mktemp("bench"), prefect_home)


def test_drift_benchmark_quick_reports_matching_verdicts(project):
    result = project.run("uv", "run", "python", "benchmarks/drift.py", "--quick", timeout=900)
    assert result.returncode == 0, explain(result)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= DRIFT_KEYS, explain(result)
    assert report["verdicts_match"] is True, report
    assert report["verdicts_as_designed"] is True, report
    assert report["seconds_ours"] > 0 and report["seconds_ks"] > 0 and report["peak_rss_ratio"] >= 0
