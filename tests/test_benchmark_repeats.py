"""`--repeats N` (benchmarks/_repeats.py): a goal is judged on the median of N runs, not on a lucky one, and
the report shows every run and its spread. A tiny script stands in for a benchmark: it prints one JSON
object last, as every benchmark does, with the figures a file tells it for each run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import _repeats  # noqa: E402
from ml_lifecycle._internal.bench.goals import verdicts  # noqa: E402

GOALS = {"ratio": (">=", 0.8), "matches": ("==", True)}


def fake_benchmark(tmp_path: Path, runs: list[dict | None]) -> list[str]:
    """A script that, on its k-th run, prints runs[k] as its JSON report (None: fails with exit code 3)."""
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    script = tmp_path / "bench.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            from pathlib import Path
            sys.path.insert(0, {str(REPO / "benchmarks")!r})
            import _repeats
            GOALS = {GOALS!r}
            repeated = _repeats.rerun_if_repeated(sys.argv[1:], GOALS)
            if repeated is not None:
                sys.exit(repeated)
            count = Path({str(tmp_path / "count")!r})
            k = int(count.read_text()) if count.exists() else 0
            count.write_text(str(k + 1))
            report = json.loads(Path({str(tmp_path / "runs.json")!r}).read_text())[k]
            print("progress on stdout is allowed")
            if report is None:
                sys.exit(3)
            print(json.dumps(report))
            """
        )
    )
    return [sys.executable, str(script)]


def run_repeated(command: list[str], *args: str) -> tuple[int, dict]:
    done = subprocess.run([*command, *args], stdout=subprocess.PIPE, text=True, timeout=60, check=False)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_a_goal_met_in_one_lucky_run_is_not_met(tmp_path):
    runs = [{"ratio": r, "matches": True} for r in (0.91, 0.7, 0.75)]
    code, report = run_repeated(fake_benchmark(tmp_path, runs), "--repeats", "3")
    assert code == 0, report
    assert report["repeats"] == 3 and report["runs"] == runs
    assert report["median"]["ratio"] == 0.75 and report["spread"]["ratio"] == [0.7, 0.91]
    assert report["goal_met"] == {"ratio": False, "matches": True} and report["all_goals_met"] is False
    assert report["goals"] == {"ratio": ">= 0.8", "matches": "== True"}
    assert len(report["load_average"]) == 3 and report["failed"] == []


def test_a_yes_no_goal_must_hold_in_every_run(tmp_path):
    runs = [{"ratio": 0.9, "matches": m} for m in (True, False, True)]
    _, report = run_repeated(fake_benchmark(tmp_path, runs), "--repeats=3")
    assert report["goal_met"] == {"ratio": True, "matches": False}, report


def test_a_failed_run_is_listed_and_fails_the_command(tmp_path):
    runs = [{"ratio": 0.9, "matches": True}, None]
    code, report = run_repeated(fake_benchmark(tmp_path, runs), "--repeats", "2")
    assert code == 1 and report["failed"] == [{"run": 2, "exit_code": 3}], report
    assert report["repeats"] == 1 and report["median"]["ratio"] == 0.9


def test_one_run_is_the_benchmarks_own_report(tmp_path):
    runs = [{"ratio": 0.9, "matches": True}]
    code, report = run_repeated(fake_benchmark(tmp_path, runs))
    assert (code, report) == (0, runs[0])


@pytest.mark.parametrize("bad", ["0", "two", ""])
def test_a_bad_count_names_the_flag(bad):
    with pytest.raises(SystemExit, match="--repeats takes a whole number"):
        _repeats.take_repeats(["--quick", "--repeats", bad] if bad else ["--repeats"])


def test_the_flag_is_taken_out_of_the_other_options():
    assert _repeats.take_repeats(["--quick", "--repeats", "5", "--seconds", "3"]) == (
        5,
        ["--quick", "--seconds", "3"],
    )


def test_one_run_judges_its_goals_as_the_repeats_do():
    """A single run's report carries the same three keys (ml_lifecycle._internal.bench.goals, which
    `python -m <package> bench` uses too): a figure the run did not measure is neither met nor missed, and
    then not all goals are met."""
    assert verdicts({"ratio": 0.9, "matches": True}, GOALS) == {
        "goals": {"ratio": ">= 0.8", "matches": "== True"},
        "goal_met": {"ratio": True, "matches": True},
        "all_goals_met": True,
    }
    unmeasured = verdicts({"ratio": None, "matches": True}, GOALS)
    assert unmeasured["goal_met"] == {"ratio": None, "matches": True}, unmeasured
    assert unmeasured["all_goals_met"] is False
    assert verdicts({"ratio": 0.79, "matches": True}, GOALS)["goal_met"]["ratio"] is False
