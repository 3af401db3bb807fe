"""The drift (P4, P7) and recovery (P8) benchmarks run from the generator's checkout, in the session's
default project (benchmark_project, passed as --project-dir), and report what they promise.

Each runs in its quick mode, which checks the wiring and the verdicts, not the timing goals (those need the
full sizes: `uv run python benchmarks/<name>.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import goals_judged
from test_serving_benchmark import quick_run

pytestmark = pytest.mark.slow

DRIFT_KEYS = {
    "seconds_ours",
    "seconds_evidently_default",
    "seconds_ks",
    "seconds_ours_with_report",
    "ratio_to_ks",
    "verdicts_match",
    "peak_rss_ratio",
}


@pytest.fixture(scope="module")
def project_dir(benchmark_project) -> Path:
    return benchmark_project


def test_drift_benchmark_quick_reports_matching_verdicts_in_every_repeat(project_dir):
    """Two runs (--repeats 2, as every benchmark takes): each reports its keys and matching verdicts, and the
    summary judges P4 and P7 on the medians of the runs."""
    summary = quick_run("drift", project_dir, "--repeats", "2")
    assert summary["repeats"] == 2 and summary["failed"] == [], summary
    for report in summary["runs"]:
        assert set(report) >= DRIFT_KEYS, report
        assert report["verdicts_match"] is True, report
        assert report["verdicts_as_designed"] is True, report
        assert report["seconds_ours"] > 0 and report["seconds_ks"] > 0 and report["peak_rss_ratio"] >= 0
        goals_judged(report, {"ratio_to_ks", "verdicts_match", "peak_rss_ratio"})
    ratios = sorted(report["ratio_to_ks"] for report in summary["runs"])
    assert summary["median"]["ratio_to_ks"] == round(sum(ratios) / 2, 4)
    assert summary["spread"]["ratio_to_ks"] == ratios
    assert set(summary["goal_met"]) == {"ratio_to_ks", "verdicts_match", "peak_rss_ratio"}


RECOVERY_KEYS = {
    "metric",
    "metric_old",
    "metric_new",
    "metric_oracle",
    "recovered_ratio",
    "seconds_event_to_serving",
    "failed_requests_during_switch",
    "recovered_ratio_noise_0",
    "recovered_ratio_noise_10",
    "recovered_ratio_noise_30",
    "false_rollbacks",
    "false_refusals_noise_10",
}


def test_recovery_benchmark_quick_reports_the_noise_table(project_dir):
    """P8's noise table in its quick mode (one seed, few trials, no demo): the gate and the watch run on
    labels with 0, 10 and 30% wrong, and never roll back or refuse a model better on the true labels."""
    report = quick_run("recovery", project_dir)
    assert set(report) >= RECOVERY_KEYS, report
    assert [len(report["noise"][level]) for level in ("0", "10", "30")] == [1, 1, 1], report["noise"]
    assert report["false_rollbacks"] == 0 and report["false_refusals_noise_10"] == 0, report["noise"]
    assert report["recovered_ratio_noise_10"] is not None, report
    goals_judged(
        report,
        {
            "recovered_ratio",
            "failed_requests_during_switch",
            "recovered_ratio_noise_10",
            "false_rollbacks",
            "false_refusals_noise_10",
        },
    )
    assert report["goal_met"]["failed_requests_during_switch"] is None, report  # no demo: not measured
