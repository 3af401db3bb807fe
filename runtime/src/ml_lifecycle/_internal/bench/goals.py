"""A benchmark's goals and how a report is judged against them: one way for `python -m <package> bench`
and for every script in the generator's benchmarks/, for one run and for the medians of `--repeats`.

A goal is a key of the report, an operator and a bound: `{"ratio_to_trivial": (">=", 0.8)}`. A report
carries `goals` (each written out), `goal_met` (each goal's verdict; None when the run did not measure
its key) and `all_goals_met`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Goals = Mapping[str, tuple[str, Any]]  # key -> (">=" | "<=" | "==", bound)
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    "==": lambda value, bound: value == bound,
}


def judge(value: Any, goal: tuple[str, Any]) -> bool:
    """Whether `value` meets `goal`; a value that was not measured (None) does not."""
    operator, bound = goal
    return value is not None and OPERATORS[operator](value, bound)


def written(goal: tuple[str, Any]) -> str:
    """A goal as the report shows it: ">= 0.8", "== True"."""
    operator, bound = goal
    number = isinstance(bound, int | float) and not isinstance(bound, bool)
    return f"{operator} {bound:g}" if number else f"{operator} {bound}"


def verdicts(report: Mapping[str, Any], goals: Goals, met: Mapping[str, bool | None] | None = None) -> dict:
    """`goals`, `goal_met` and `all_goals_met` for a report: each goal judged on the report's value of its
    key, unless `met` gives the verdicts already (the medians of repeated runs)."""
    if met is None:
        met = {
            key: None if report.get(key) is None else judge(report[key], goal) for key, goal in goals.items()
        }
    return {
        "goals": {key: written(goal) for key, goal in goals.items()},
        "goal_met": dict(met),
        "all_goals_met": bool(met) and all(verdict is True for verdict in met.values()),
    }
