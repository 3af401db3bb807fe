"""Benchmark P3: single-row requests to the service, next to plain FastAPI and BentoML's own ceiling.

    uv run python benchmarks/serving.py [--seconds 15] [--concurrency 32] [--quick] [--keep]
                                        [--project-dir DIR]

Renders and installs a default project, trains a production model in it (3 Optuna trials with --quick)
and runs `python -m <package> bench --compare` there: the measurement is the library's
(ml_lifecycle/_internal/bench/serving.py, whose docstring describes the variants and every key), the
same code a user runs on their own model with `python -m <package> bench`. Needs `hey`, the HTTP load
generator (Debian/Ubuntu: `apt-get install hey`).

Goals P3: ratio_to_trivial >= 0.8, ratio_to_fastapi >= 4, p99_ratio_to_trivial <= 2, non_2xx == 0.

The last line printed is one JSON object; the exit code is non-zero only on errors (hey missing, a server
that does not start), never because a goal was missed.
"""

from __future__ import annotations

import argparse

from _common import load_project, run
from ml_lifecycle._internal.bench.serving import GOALS, add_arguments, bench

__all__ = ["GOALS"]  # judged on the medians with --repeats (_repeats.py)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args()
    args.compare = True
    load_project()  # binds the library to the project before the bench reads its settings
    return bench(args)


if __name__ == "__main__":
    run(main, needs_model=True)
