"""Drift between the training reference and a current batch, computed with Evidently.

Evidently is imported inside `compute_drift` only: it takes seconds to import, and the CLI, the service and
the training flow never need it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .data import DataError, conform


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    drift_share: float
    drifted_columns: list[str]
    threshold: float
    n_reference: int
    n_current: int
    columns: list[ColumnDrift] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        """At or above the threshold share of drifted columns, the batch counts as drifted."""
        return self.drift_share >= self.threshold

    def payload(self) -> dict[str, Any]:
        return {
            "drift_share": self.drift_share,
            "drifted_columns": self.drifted_columns,
            "threshold": self.threshold,
            "n_current": self.n_current,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"drifted": self.drifted}


def prepare_current(current: pd.DataFrame, schema: dict[str, dict[str, Any]], source: str) -> pd.DataFrame:
    """The current batch with the reference's columns and types; a clear error when it cannot match."""
    if current.empty:
        raise DataError(f"{source}: the current batch has no rows; nothing to compare")
    try:
        return conform(current, schema)
    except (DataError, ValueError, TypeError) as exc:
        raise DataError(f"{source}: {exc}") from exc


def compute_drift(
    reference: pd.DataFrame, current: pd.DataFrame, schema: dict[str, dict[str, Any]], threshold: float
) -> tuple[DriftResult, Any]:
    """Per-column drift with Evidently's DataDriftPreset; returns the verdict and Evidently's snapshot."""
    from evidently import DataDefinition, Report
    from evidently import Dataset as EvidentlyDataset
    from evidently.presets import DataDriftPreset

    columns = list(schema)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if schema[c]["kind"] == "number"],
        categorical_columns=[c for c in columns if schema[c]["kind"] == "category"],
    )
    report = Report([DataDriftPreset(columns=columns, drift_share=threshold)], include_tests=True)
    snapshot = report.run(
        current_data=EvidentlyDataset.from_pandas(current[columns], data_definition=definition),
        reference_data=EvidentlyDataset.from_pandas(reference[columns], data_definition=definition),
    )
    result = parse_snapshot(snapshot.dict(), threshold, len(reference), len(current))
    return result, snapshot


def parse_snapshot(
    snapshot: dict[str, Any], threshold: float, n_reference: int, n_current: int
) -> DriftResult:
    """Read the per-column verdicts from the ValueDrift tests, and scores and methods from their metrics."""
    scores = {
        m["config"]["column"]: m for m in snapshot["metrics"] if m["config"]["type"].endswith("ValueDrift")
    }
    verdicts = {
        t["metric_config"]["params"]["column"]: str(t["status"]).endswith("FAIL")
        for t in snapshot["tests"]
        if t["metric_config"]["params"]["type"].endswith("ValueDrift")
    }
    columns = [
        ColumnDrift(
            column=name,
            method=str(metric["config"].get("method")),
            score=float(metric["value"]),
            threshold=float(metric["config"].get("threshold") or 0.0),
            drifted=verdicts[name],
        )
        for name, metric in scores.items()
    ]
    drifted = sorted(c.column for c in columns if c.drifted)
    share = len(drifted) / len(columns) if columns else 0.0
    return DriftResult(
        drift_share=round(share, 6),
        drifted_columns=drifted,
        threshold=threshold,
        n_reference=n_reference,
        n_current=n_current,
        columns=columns,
    )


def markdown_summary(result: DriftResult, model_tag: str, source: str) -> str:
    verdict = "DRIFT DETECTED" if result.drifted else "no drift"
    lines = [
        f"# Drift check: {verdict}",
        "",
        f"Model `{model_tag}`, current batch `{source}` ({result.n_current} rows) against "
        f"{result.n_reference} reference rows.",
        "",
        f"Share of drifted columns: **{result.drift_share:.3f}** (threshold {result.threshold}).",
        "",
        "| column | method | score | threshold | drifted |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.column} | {c.method} | {c.score:.4g} | {c.threshold:.4g} | {'yes' if c.drifted else 'no'} |"
        for c in sorted(result.columns, key=lambda c: (not c.drifted, c.column))
    ]
    return "\n".join(lines)


def save_report(snapshot: Any, reports_dir: Path, name: str) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"{name}.html"
    snapshot.save_html(str(path))
    return path
