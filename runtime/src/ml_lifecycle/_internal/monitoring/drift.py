"""Drift between the training reference and a current batch, computed with Evidently.

Evidently is imported inside `compute_drift` only: it is slow to import, and the CLI, the service and the
training flow never need it (docs/decisions.md#import-times).

Which method, at which size (settings.toml, [monitoring])
- Evidently chooses each column's method from the reference's size, and we keep its choice unless
  `num_method`, `cat_method` or their thresholds say otherwise: a test (KS, chi-squared, Z) up to 1,000
  rows, a distance (normed Wasserstein, Jensen-Shannon) above. On many rows every real-world column is
  "significant" to a test, so the question becomes whether a shift is large enough to matter, which a
  distance answers (docs/decisions.md#drift-methods).
- Before Evidently sees them, the reference and the current batch are each cut to a random sample of at
  most `max_rows` rows, drawn with `sample_seed`, so a rerun gives the same verdict and time and memory stay
  flat as batches grow. A column that clearly drifted or clearly did not gets the verdict it gets on all
  rows; only a column very close to its threshold can change sides, and a pinned test loses some power
  (docs/decisions.md#drift-sample; benchmarks/drift.py).
- The data-quality summary (missing values, categories never seen in training, ignored columns) is
  counted on all rows: it is cheap, and a rare new category must not hide outside the sample.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ..config import MonitoringSettings, get_settings
from ..storage import REPORTS, Storage, StorageError
from ..tables import DataError, conform

IGNORED_COLUMNS = "ignored_columns"  # key in a prepared batch's DataFrame.attrs
# The model's predictions ride along as one more column, so Evidently measures prediction drift in the
# same report; it does not count in the share of drifted features. Normalized feature names never start
# with "_", so it cannot collide with one.
PREDICTION = "_prediction"
MAX_EXAMPLES = 10  # unseen categories listed per column


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DataQuality:
    """What is wrong with the batch besides drift, counted on all of its rows."""

    # column -> share of missing values in the reference and in the batch, for columns missing any
    missing: dict[str, dict[str, float]] = field(default_factory=dict)
    # category column -> values the model never saw in training (at most MAX_EXAMPLES), and how many rows
    unseen_categories: dict[str, list[str]] = field(default_factory=dict)
    unseen_rows: dict[str, int] = field(default_factory=dict)
    # columns of the batch that the model does not use (missing ones are refused by prepare_current)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unseen_categories or self.ignored_columns)


@dataclass(frozen=True)
class DriftResult:
    drift_share: float
    drifted_columns: list[str]
    threshold: float
    n_reference: int
    n_current: int
    columns: list[ColumnDrift] = field(default_factory=list)
    # rows Evidently compared: a fixed-seed sample of at most monitoring.max_rows of each frame
    n_reference_compared: int = 0
    n_current_compared: int = 0
    quality: DataQuality = field(default_factory=DataQuality)
    prediction: ColumnDrift | None = None

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
    """The current batch with the reference's columns and types; a clear error when it cannot match.

    Columns the model does not use are dropped and named in the result's `attrs["ignored_columns"]`."""
    if current.empty:
        raise DataError(f"{source}: the current batch has no rows; nothing to compare")
    try:
        prepared = conform(current, schema)
    except (DataError, ValueError, TypeError) as exc:
        raise DataError(f"{source}: {exc}") from exc
    prepared.attrs[IGNORED_COLUMNS] = [str(c) for c in current.columns if c not in schema]
    return prepared


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows of `frame`, drawn at random without replacement (the same rows for the same
    seed and length), kept in their original order; the frame itself when it is small enough."""
    if len(frame) <= max_rows:
        return frame
    positions = np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False)
    positions.sort()
    return frame.iloc[positions]


def preset_options(options: MonitoringSettings) -> dict[str, Any]:
    """The DataDriftPreset arguments that the settings pin; empty ones leave Evidently's default."""
    chosen = {
        "num_method": options.num_method,
        "cat_method": options.cat_method,
        "num_threshold": options.num_threshold,
        "cat_threshold": options.cat_threshold,
    }
    return {key: value for key, value in chosen.items() if value}


def data_quality(
    reference: pd.DataFrame, current: pd.DataFrame, schema: dict[str, dict[str, Any]]
) -> DataQuality:
    missing: dict[str, dict[str, float]] = {}
    unseen: dict[str, list[str]] = {}
    unseen_rows: dict[str, int] = {}
    for column, spec in schema.items():
        values = current[column]
        share = float(values.isna().mean())
        if share > 0:
            missing[column] = {
                "reference": round(float(reference[column].isna().mean()), 6),
                "current": round(share, 6),
            }
        if spec["kind"] == "category" and "categories" in spec:
            known = set(spec["categories"])
            new = values.notna() & ~values.isin(known)  # prepare_current made categories strings
            if new.any():
                unseen[column] = sorted({str(v) for v in values[new].unique()})[:MAX_EXAMPLES]
                unseen_rows[column] = int(new.sum())
    return DataQuality(
        missing=missing,
        unseen_categories=unseen,
        unseen_rows=unseen_rows,
        ignored_columns=list(current.attrs.get(IGNORED_COLUMNS, [])),
    )


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: dict[str, dict[str, Any]],
    threshold: float,
    options: MonitoringSettings | None = None,
    prediction_kind: str | None = None,
) -> tuple[DriftResult, Any]:
    """Per-column drift with Evidently's DataDriftPreset on samples of both frames (see the module's
    docstring); returns the verdict and Evidently's snapshot. `options` defaults to the project's
    [monitoring] settings. With `prediction_kind` ("number" or "category"), both frames carry the model's
    predictions in the PREDICTION column, and its drift is measured too (in `result.prediction`)."""
    from evidently import DataDefinition, Report
    from evidently import Dataset as EvidentlyDataset
    from evidently.presets import DataDriftPreset

    options = options or get_settings().monitoring
    quality = data_quality(reference, current, schema)
    if prediction_kind is not None:
        schema = {**schema, PREDICTION: {"kind": prediction_kind}}
    columns = list(schema)
    reference_sample = sample_rows(reference, options.max_rows, options.sample_seed)[columns]
    current_sample = sample_rows(current, options.max_rows, options.sample_seed)[columns]
    definition = DataDefinition(
        numerical_columns=[c for c in columns if schema[c]["kind"] == "number"],
        categorical_columns=[c for c in columns if schema[c]["kind"] == "category"],
    )
    preset = DataDriftPreset(columns=columns, drift_share=threshold, **preset_options(options))
    snapshot = Report([preset], include_tests=True).run(
        current_data=EvidentlyDataset.from_pandas(current_sample, data_definition=definition),
        reference_data=EvidentlyDataset.from_pandas(reference_sample, data_definition=definition),
    )
    result = parse_snapshot(
        snapshot.dict(),
        threshold,
        len(reference),
        len(current),
        compared=(len(reference_sample), len(current_sample)),
        quality=quality,
    )
    return result, snapshot


def parse_snapshot(
    snapshot: dict[str, Any],
    threshold: float,
    n_reference: int,
    n_current: int,
    compared: tuple[int, int] | None = None,
    quality: DataQuality | None = None,
) -> DriftResult:
    """Read the per-column verdicts from the ValueDrift tests, and scores and methods from their metrics;
    the PREDICTION column's goes to `prediction`, apart from the features'."""
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
    prediction = next((c for c in columns if c.column == PREDICTION), None)
    columns = [c for c in columns if c.column != PREDICTION]
    drifted = sorted(c.column for c in columns if c.drifted)
    share = len(drifted) / len(columns) if columns else 0.0
    n_reference_compared, n_current_compared = compared or (n_reference, n_current)
    return DriftResult(
        drift_share=round(share, 6),
        drifted_columns=drifted,
        threshold=threshold,
        n_reference=n_reference,
        n_current=n_current,
        columns=columns,
        n_reference_compared=n_reference_compared,
        n_current_compared=n_current_compared,
        quality=quality or DataQuality(),
        prediction=prediction,
    )


def markdown_summary(result: DriftResult, model_tag: str, source: str) -> str:
    verdict = "DRIFT DETECTED" if result.drifted else "no drift"
    lines = [
        f"# Drift check: {verdict}",
        "",
        f"Model `{model_tag}`, current batch `{source}` ({result.n_current} rows) against "
        f"{result.n_reference} reference rows.",
    ]
    if (result.n_reference_compared, result.n_current_compared) != (result.n_reference, result.n_current):
        lines.append(
            f"Compared on random samples of {result.n_reference_compared} reference and "
            f"{result.n_current_compared} current rows (monitoring.max_rows)."
        )
    lines += [
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
    if result.prediction is not None:
        p = result.prediction
        lines += [
            "",
            f"Prediction drift ({p.method}): score {p.score:.4g}, threshold {p.threshold:.4g}: "
            f"**{'drifted' if p.drifted else 'stable'}** (not counted in the share above).",
        ]
    return "\n".join(lines + quality_lines(result.quality))


def quality_lines(quality: DataQuality) -> list[str]:
    """The data-quality section of the summary (all rows of the batch); nothing when there is nothing."""
    if quality.clean:
        return []
    lines = ["", "## Data quality", ""]
    if quality.missing:
        lines += ["| column | missing (reference) | missing (current) |", "|---|---|---|"]
        lines += [
            f"| {column} | {shares['reference']:.2%} | {shares['current']:.2%} |"
            for column, shares in sorted(quality.missing.items())
        ]
        lines.append("")
    for column, values in sorted(quality.unseen_categories.items()):
        shown = ", ".join(f"`{v}`" for v in values)
        rows = quality.unseen_rows[column]
        lines.append(f"- `{column}`: {rows} rows with categories never seen in training: {shown}")
    if quality.ignored_columns:
        lines.append(f"- Columns the model does not use (ignored): {', '.join(quality.ignored_columns)}")
    return lines


def save_report(snapshot: Any, storage: Storage, when: datetime) -> str:
    """The Evidently HTML report under `reports/` in the store, where every machine's runs put theirs (a
    worker's own disk goes with its pod); the key, partitioned by day like the request log. Written
    create-only with a random suffix, so two runs in the same second never overwrite each other."""
    html = snapshot.get_html_str(as_iframe=False).encode()
    key = f"{REPORTS}/date={when:%Y-%m-%d}/drift-{when:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.html"
    if not storage.create(key, html, content_type="text/html; charset=utf-8"):
        raise StorageError(f"{storage.url_of(key)}: a report is already there; run the monitor again")
    return key


def report_link(storage: Storage, key: str, reports_url: str = "") -> str:
    """A link to the report that works for whoever opens the Prefect UI, not a path on the worker:
    monitoring.reports_url when set (where the store's reports/ folder is served), else a signed URL on
    object storage (valid 7 days, SigV4's longest) or a file:// link on a folder store."""
    if reports_url:
        return f"{reports_url.rstrip('/')}/{key.removeprefix(REPORTS + '/')}"
    return storage.link(key)
