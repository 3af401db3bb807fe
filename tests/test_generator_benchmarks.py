"""The generator's own benchmarks (P1 tuning overhead, P5 time to first prediction) run in their quick modes
and report what they promise. P5 renders the committed template and installs it (that is what it times); P1
runs in the session's default project (benchmark_project, as --project-dir). The quick mode shrinks the
work (a few trials, no warm-up), so it checks the wiring and the keys, not the goals (`uv run python
benchmarks/<name>.py` on a quiet machine does).
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, explain, goals_judged, run, subprocess_env

pytestmark = pytest.mark.slow


def quick_run(name: str, *options: str) -> dict:
    """`python benchmarks/<name>.py --quick [options]` with the generator's interpreter (not `uv run`: a
    test's UV_PYTHON would make uv rebuild the generator's own virtualenv); the JSON object it prints last."""
    command = [sys.executable, f"benchmarks/{name}.py", "--quick", *options]
    result = run(command, cwd=REPO, env=subprocess_env(), timeout=1800)
    assert result.returncode == 0, explain(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tuning_overhead_compares_the_flow_and_a_bare_loop_on_the_same_trials(benchmark_project):
    report = quick_run("tuning_overhead", "--project-dir", str(benchmark_project))
    assert (report["trials"], report["trials_per_task"], report["rounds"]) == (3, 2, 2), report
    assert report["same_trials"] is True and report["first_differing_trial"] is None, report
    for key in ("seconds_ours", "seconds_bare", "seconds_bare_inmemory", "seconds_empty_flow_run", "ratio"):
        assert report[key] > 0, (key, report)
    goals_judged(report, {"ratio", "same_trials"})
    assert report["goals"] == {"ratio": "<= 1.1", "same_trials": "== True"}, report
    assert [set(one_round) for one_round in report["per_round"]] == [{"ours", "bare", "bare_inmemory"}] * 2


def test_time_to_first_prediction_reaches_an_answer_and_leaves_its_port_free():
    report = quick_run("time_to_first_prediction")
    assert set(report["stages"]) == {"copy", "install", "train", "serve_to_first_answer"}, report
    assert set(report["floor_stages"]) == {"install", "import"}, report
    assert all(seconds > 0 for seconds in [*report["stages"].values(), *report["floor_stages"].values()])
    assert report["seconds"] > 0 and report["floor_seconds"] > 0 and report["ratio_to_floor"] > 0, report
    # Beside the floor, not in it: one empty flow run on a new Prefect home.
    first_flow = report["first_flow_seconds"]
    assert first_flow > 0 and report["untimed"]["floor_first_flow"] == first_flow, report
    with_first_flow = round(report["seconds"] / (report["floor_seconds"] + first_flow), 2)
    assert report["ratio_to_floor_and_first_flow"] == with_first_flow < report["ratio_to_floor"], report
    assert report["port_released"] is True and report["quick"] is True, report
    # One round of the project's `serve` next to the trivial BentoML service, both to a first answer.
    [round_] = report["serve_rounds"]
    assert round_["project"] > 0 and round_["trivial"] > 0, report
    assert report["serve_ratio_to_trivial"] == round_["ratio"] > 0, report
    goals_judged(report, {"ratio_to_floor", "serve_ratio_to_trivial"})
