"""`--repeats N`: a benchmark's whole measurement N times, each in a fresh process, judged on the medians.

A single run on a shared machine swings by 20-30%, so a goal met in one lucky run is not met. Every script
takes `--repeats N` (1 by default: one run, its report unchanged). With N > 1 the measurement runs N times
in a row, each child's stderr (progress) goes straight to ours, and the last line printed is one JSON object:

- `repeats`: N; `runs`: each run's own report, in order;
- `median` and `spread` (`[min, max]`) of every number the runs report at their top level;
- `goals`: the script's goals (`GOALS`, e.g. `{"ratio_to_trivial": ">= 0.8"}`), and `goal_met`: each goal
  judged on the median of its key (a boolean key, e.g. `verdicts_match`, must hold in every run),
  `all_goals_met`;
- `load_average`: the machine's 1-minute load before and after each run, to read the spread by.

Runs that failed (non-zero exit or no JSON) are listed in `failed` and make the exit code non-zero.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml_lifecycle._internal.bench.goals import Goals, judge, verdicts


def take_repeats(argv: Sequence[str]) -> tuple[int, list[str]]:
    """`--repeats N` (or `--repeats=N`) taken out of argv: (N, the rest); a bad N names the flag."""
    rest, repeats, args = [], 1, list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--repeats" or arg.startswith("--repeats="):
            value = arg.partition("=")[2] if "=" in arg else (args.pop(0) if args else "")
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"--repeats takes a whole number of runs, at least 1 (got {value!r})")
            repeats = int(value)
        else:
            rest.append(arg)
    return repeats, rest


def last_json(stdout: str) -> dict[str, Any] | None:
    """The JSON object a benchmark prints as its last line; None if there is none."""
    lines = stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def _numbers(report: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def summarize(reports: Sequence[Mapping[str, Any]], goals: Goals) -> dict[str, Any]:
    """Median and spread of every top-level number over the runs, each goal judged on its median."""
    numbers = [_numbers(report) for report in reports]
    median, spread = {}, {}
    for key in sorted({k for found in numbers for k in found}):
        values = [found[key] for found in numbers if key in found]
        median[key] = round(statistics.median(values), 4)
        spread[key] = [min(values), max(values)]
    goal_met = {}
    for key, goal in goals.items():
        flags = [report.get(key) for report in reports]
        if all(isinstance(flag, bool) for flag in flags):  # a yes/no goal holds only if it held every time
            goal_met[key] = bool(reports) and all(judge(flag, goal) for flag in flags)
        else:
            goal_met[key] = judge(median.get(key), goal)
    return {"repeats": len(reports), "median": median, "spread": spread, **verdicts(median, goals, goal_met)}


def repeat(
    command: Sequence[str],
    repeats: int,
    goals: Goals,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run `command` (one measurement, printing its JSON last) `repeats` times; print the summary last."""
    reports: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    load: list[list[float]] = []
    for number in range(1, repeats + 1):
        print(f"--- run {number} of {repeats} ---", file=sys.stderr, flush=True)
        before = os.getloadavg()[0]
        done = subprocess.run(
            list(command), cwd=cwd, env=None if env is None else dict(env), stdout=subprocess.PIPE, text=True
        )
        load.append([round(before, 2), round(os.getloadavg()[0], 2)])
        report = last_json(done.stdout)
        lines = done.stdout.strip().splitlines(keepends=True)
        # Its other output goes to stderr, all of it when the run failed (its last line is then no report).
        ok = done.returncode == 0 and report is not None
        sys.stderr.write("".join(lines[:-1] if ok else lines[-200:]))
        if ok:
            reports.append(report)
        else:
            failed.append({"run": number, "exit_code": done.returncode})
    summary = {**summarize(reports, goals), "load_average": load, "failed": failed, "runs": reports}
    print(json.dumps(summary))
    return 1 if failed or not reports else 0


def main_goals() -> Goals:
    """The running script's GOALS (benchmarks/_common.run calls us from inside it), or none."""
    return dict(getattr(sys.modules.get("__main__"), "GOALS", None) or {})


def rerun_if_repeated(argv: Sequence[str], goals: Goals) -> int | None:
    """For a script that installs what it measures itself (no `_common.run`): with `--repeats N` (N > 1),
    run this same script N times without the flag and return the exit code; None to measure once here."""
    repeats, rest = take_repeats(argv)
    if repeats == 1:
        return None
    return repeat([sys.executable, sys.argv[0], *rest], repeats, goals)
