"""The replay before promotion: the candidate and production score the same recorded requests.

The gate judges a candidate on held-out rows; the replay shows what promoting it would change for the
requests the service really answered: the last `monitoring.window_hours` of the request log, read as the
monitor reads it (monitoring/served_traffic.py), the newest REPLAY_ROWS rows of it. No live traffic is
touched: both models score the logged features here, in the gate's process.

It reports how often the two disagree (classification: the share of rows with another predicted class;
regression: the share of rows whose predictions differ by more than REGRESSION_TOLERANCE of the target's
spread, and the mean absolute difference), each model's scoring time per 1,000 rows and their ratio, and,
for the replayed rows that have a label (labels.join, the one join), both models' primary metric on them.
A candidate that disagrees more than `promotion.max_disagreement`, or is slower than
`promotion.max_latency_ratio` times production, is not promoted (`limit_exceeded`).

Without a request log, or with fewer than `monitoring.min_rows` rows in the window, the replay is skipped and
says so: a new project has no traffic yet, and that is no reason to refuse a candidate.
"""

from __future__ import annotations

import timeit
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from .. import tables
from ..config import Settings
from ..monitoring import labels as label_table
from ..monitoring import served_traffic
from ..tables import DataError
from ..training.metrics import class_text, primary_metric

REPLAY_ROWS = 5000  # the newest rows of the window replayed: enough to see a change, quick to score
# Regression: predictions further apart than this share of the target's spread (its standard deviation on
# the gate's rows) count as a disagreement.
REGRESSION_TOLERANCE = 0.05
# Each model scores the rows this many times, the two in turn (a burst of load on the machine slows both);
# the fastest round of each counts, as timeit advises.
TIMING_ROUNDS = 5


@dataclass(frozen=True)
class Replay:
    """What replaying the recorded requests found; `state` "skipped" with `note` saying why."""

    state: Literal["replayed", "skipped"]
    note: str
    rows: int = 0
    window: str = ""
    task_type: str = ""
    # classification: share of rows with another predicted class; regression: share beyond the tolerance
    disagreement: float | None = None
    mean_abs_difference: float | None = None  # regression only
    tolerance: float | None = None  # regression only: the absolute difference that counts as disagreeing
    candidate_ms_per_1000: float | None = None
    production_ms_per_1000: float | None = None
    latency_ratio: float | None = None  # candidate's time / production's
    metric: str = ""
    labelled_rows: int = 0
    candidate_metric: float | None = None
    production_metric: float | None = None

    @property
    def replayed(self) -> bool:
        return self.state == "replayed"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The replay's section of the gate's artifact and of the approval form."""
        if not self.replayed:
            return f"## Replay of recorded requests\n\nSkipped: {self.note}."
        lines = [
            "## Replay of recorded requests",
            "",
            f"{self.rows} rows of the {self.window}, scored by both models.",
            "",
            "| | value |",
            "|---|---|",
            f"| disagreement | {self.disagreement:.1%} of rows |",
        ]
        if self.mean_abs_difference is not None:
            lines.append(f"| mean absolute difference | {self.mean_abs_difference:.4g} |")
            lines.append(f"| tolerance (a disagreement beyond) | {self.tolerance:.4g} |")
        lines += [
            f"| candidate scoring time | {self.candidate_ms_per_1000:.1f} ms per 1,000 rows |",
            f"| production scoring time | {self.production_ms_per_1000:.1f} ms per 1,000 rows |",
            f"| latency ratio (candidate / production) | {self.latency_ratio:.2f} |",
        ]
        if self.candidate_metric is not None and self.production_metric is not None:
            lines.append(
                f"| {self.metric} on {self.labelled_rows} labelled rows | candidate "
                f"{self.candidate_metric:.4f}, production {self.production_metric:.4f} |"
            )
        else:
            lines.append(f"| {self.metric} on labelled rows | n/a ({self.labelled_rows} labelled rows) |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


def skipped(note: str, **known: Any) -> Replay:
    return Replay(state="skipped", note=note, **known)


def disagreement(
    candidate: np.ndarray, production: np.ndarray, task_type: str, tolerance: float = 0.0
) -> tuple[float, float | None]:
    """The share of rows on which the two predictions disagree and, for regression, the mean absolute
    difference. Classes are compared by their text, so 1 and "1" agree."""
    if task_type == "classification":
        one = np.array([class_text(v) for v in candidate], dtype=object)
        two = np.array([class_text(v) for v in production], dtype=object)
        return float(np.mean(one != two)), None
    difference = np.abs(np.asarray(candidate, dtype=float) - np.asarray(production, dtype=float))
    return float(np.mean(difference > tolerance)), float(np.mean(difference))


def ms_per_1000(*scored: tuple[Any, pd.DataFrame]) -> list[float]:
    """The time each (pipeline, rows) takes to predict its rows, per 1,000 rows: the fastest of TIMING_ROUNDS,
    the pipelines timed in turn within each round."""
    best = [float("inf")] * len(scored)
    for _ in range(TIMING_ROUNDS):
        for i, (pipeline, features) in enumerate(scored):
            seconds = timeit.timeit(lambda p=pipeline, f=features: p.predict(f), number=1)
            best[i] = min(best[i], seconds)
    return [
        seconds * 1000 * 1000 / len(features) for seconds, (_, features) in zip(best, scored, strict=True)
    ]


def compare(
    candidate: Any,
    production: Any,
    candidate_rows: pd.DataFrame,
    production_rows: pd.DataFrame,
    task_type: str,
    tolerance: float = 0.0,
) -> dict[str, Any]:
    """Both fitted pipelines on the same rows (each given them in its own schema's columns): disagreement,
    mean absolute difference (regression) and the scoring times."""
    share, mean_difference = disagreement(
        np.asarray(candidate.predict(candidate_rows)),
        np.asarray(production.predict(production_rows)),
        task_type,
        tolerance,
    )
    cand_ms, prod_ms = ms_per_1000((candidate, candidate_rows), (production, production_rows))
    return {
        "rows": len(candidate_rows),
        "task_type": task_type,
        "disagreement": share,
        "mean_abs_difference": mean_difference,
        "tolerance": tolerance if task_type == "regression" else None,
        "candidate_ms_per_1000": cand_ms,
        "production_ms_per_1000": prod_ms,
        "latency_ratio": cand_ms / prod_ms if prod_ms > 0 else float("inf"),
    }


def labelled_metrics(
    settings: Settings,
    window: served_traffic.Window,
    candidate: Any,
    production: Any,
    rows: tuple[pd.DataFrame, pd.DataFrame],
    task_type: str,
) -> dict[str, Any]:
    """Both models' primary metric on the replayed rows that have a label (labels.join); empty figures and
    a note when there are none or the metric cannot be computed there (one class only)."""
    metric = primary_metric(task_type)
    found: dict[str, Any] = {"metric": metric.name, "labelled_rows": 0}
    try:
        labels = served_traffic.read_labels(settings, settings.data.target_column, task_type)
    except DataError as exc:
        return found | {"note": f"labels not used: {exc}"}
    if labels is None:
        return found
    joined, _ = label_table.join(window, labels)
    if metric.classifies:
        truth = joined["label"].map(class_text)
    else:
        truth = pd.to_numeric(joined["label"], errors="coerce")
        joined, truth = joined[truth.notna().to_numpy()], truth.dropna()
    positions = joined["position"].to_numpy()
    found["labelled_rows"] = len(positions)
    if not len(positions):
        return found
    cand_rows, prod_rows = (part.iloc[positions] for part in rows)
    try:
        return found | {
            "candidate_metric": metric.score(truth.to_numpy(), metric.output(candidate, cand_rows)),
            "production_metric": metric.score(truth.to_numpy(), metric.output(production, prod_rows)),
        }
    except ValueError as exc:  # one class only among the labels: ROC AUC needs two
        return found | {"note": f"{metric.name} cannot be computed on the labelled rows: {exc}"}


def replay(
    settings: Settings,
    candidate: Any,
    production: Any,
    target_spread: float,
    end: datetime | None = None,
) -> Replay:
    """Replay the newest recorded requests (up to REPLAY_ROWS of the last monitoring.window_hours) through
    both registered models (store.RegisteredModel: pipeline, schema, metadata). `target_spread`: the
    target's standard deviation on the gate's rows, the scale of a regression's tolerance."""
    task_type = candidate.metadata["task_type"]
    end = end or datetime.now(UTC)
    start = end - timedelta(hours=settings.monitoring.window_hours)
    try:
        window = served_traffic.read_window(settings, start, end)
    except (OSError, DataError) as exc:
        return skipped(f"the request log could not be read ({exc})")
    if len(window) < settings.monitoring.min_rows:
        return skipped(
            f"{len(window)} recorded request rows in the {window.describe()}, fewer than "
            f"monitoring.min_rows ({settings.monitoring.min_rows})",
            rows=len(window),
        )
    if len(window) > REPLAY_ROWS:
        window = window.select(slice(len(window) - REPLAY_ROWS, None))  # the newest rows
    try:
        cand_rows = tables.conform(window.features, candidate.schema)
        prod_rows = tables.conform(window.features, production.schema)
    except (DataError, KeyError, ValueError) as exc:  # logged rows one of the models cannot read
        return skipped(f"the recorded rows do not fit both models' columns ({exc})", rows=len(window))
    tolerance = REGRESSION_TOLERANCE * (target_spread or 1.0)
    figures = compare(candidate.pipeline, production.pipeline, cand_rows, prod_rows, task_type, tolerance)
    metrics = labelled_metrics(
        settings, window, candidate.pipeline, production.pipeline, (cand_rows, prod_rows), task_type
    )
    note = metrics.pop("note", "")
    return Replay(state="replayed", note=note, window=window.describe(), **figures, **metrics)


def limit_exceeded(result: Replay, max_disagreement: float, max_latency_ratio: float) -> str:
    """Why the replay refuses the candidate ("" when it does not): a disagreement beyond
    promotion.max_disagreement (1 never refuses) or a latency ratio beyond promotion.max_latency_ratio."""
    if not result.replayed:
        return ""
    assert result.disagreement is not None and result.latency_ratio is not None
    reasons = []
    if max_disagreement < 1 and result.disagreement > max_disagreement:
        reasons.append(
            f"the replay of {result.rows} recorded requests: it disagrees with production on "
            f"{result.disagreement:.1%} of rows, more than promotion.max_disagreement {max_disagreement:g}"
        )
    if result.latency_ratio > max_latency_ratio:
        reasons.append(
            f"the replay of {result.rows} recorded requests: it takes {result.latency_ratio:.2f} times "
            f"production's scoring time ({result.candidate_ms_per_1000:.1f} vs "
            f"{result.production_ms_per_1000:.1f} ms per 1,000 rows), more than promotion.max_latency_ratio "
            f"{max_latency_ratio:g}"
        )
    return "; ".join(reasons)
