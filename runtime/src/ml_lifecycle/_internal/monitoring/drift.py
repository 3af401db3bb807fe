"""Drift between the training reference and a current batch, computed with Evidently.

Evidently is imported inside the functions that use it only: it is slow to import, and the CLI, the
service and the training flow never need it (docs/decisions.md#import-times).

The verdict comes first, from each column's statistical test alone (the one Evidently's DataDriftPreset
runs for it); the preset's full report, which costs many times more, is built from the same samples after
the monitor has sent its retrain events (DriftReport; docs/decisions.md#drift-verdict-first).

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
) -> tuple[DriftResult, DriftReport]:
    """Per-column drift on samples of both frames (see the module's docstring): the verdict now, with
    Evidently's statistical tests as its DataDriftPreset picks them, and Evidently's full report on the same
    samples later, when `DriftReport.snapshot` is called. `options` defaults to the project's
    [monitoring] settings. With `prediction_kind` ("number" or "category"), both frames carry the model's
    predictions in the PREDICTION column, and its drift is measured too (in `result.prediction`)."""
    options = options or get_settings().monitoring
    quality = data_quality(reference, current, schema)
    if prediction_kind is not None:
        schema = {**schema, PREDICTION: {"kind": prediction_kind}}
    columns = list(schema)
    reference_sample = sample_rows(reference, options.max_rows, options.sample_seed)[columns]
    current_sample = sample_rows(current, options.max_rows, options.sample_seed)[columns]
    report = DriftReport(reference_sample, current_sample, schema, threshold, preset_options(options))
    judged = report.column_drift()
    drifted = sorted(c.column for c in judged if c.drifted and c.column != PREDICTION)
    features = [c for c in judged if c.column != PREDICTION]
    result = DriftResult(
        drift_share=round(len(drifted) / len(features), 6) if features else 0.0,
        drifted_columns=drifted,
        threshold=threshold,
        n_reference=len(reference),
        n_current=len(current),
        columns=features,
        n_reference_compared=len(reference_sample),
        n_current_compared=len(current_sample),
        quality=quality,
        prediction=next((c for c in judged if c.column == PREDICTION), None),
    )
    return result, report


@dataclass(frozen=True)
class DriftReport:
    """The samples a verdict was judged on, and the means to Evidently's full DataDriftPreset report on them.

    The verdict (`column_drift`) runs only each column's statistical test, the one the preset's ValueDrift
    metric runs for it: the preset also computes every test twice more (its summary and table metrics), and
    draws a dozen plotly figures per column, which is nearly all of its time on a small window and most of
    it on a large one (docs/decisions.md#drift-verdict-first). So the monitor sends its retrain events as
    soon as the verdict is known and builds the report (`snapshot`) after; its per-column verdicts are the
    same (runtime/tests/monitoring/test_drift.py compares the two)."""

    reference: pd.DataFrame
    current: pd.DataFrame
    schema: dict[str, dict[str, Any]]
    threshold: float
    pinned: dict[str, Any]

    def column_drift(self) -> list[ColumnDrift]:
        """Each column's drift as the preset's ValueDrift metric and test judge it. Written out, not
        run through Evidently's Report, to skip the rest of the preset's work (the class docstring); every
        step is Evidently's own: the method and threshold from DataDriftOptions, as DataDriftPreset resolves
        them, infinities and missing values dropped as its get_one_column_drift drops them, then get_stattest
        (its default method for the column's type and size when none is pinned) and the test itself."""
        from evidently.legacy.calculations.stattests import get_stattest
        from evidently.legacy.core import ColumnType
        from evidently.legacy.options.data_drift import DataDriftOptions

        pinned = self.pinned
        options = DataDriftOptions(
            drift_share=self.threshold,
            num_features_stattest=pinned.get("num_method"),
            cat_features_stattest=pinned.get("cat_method"),
            num_features_threshold=pinned.get("num_threshold"),
            cat_features_threshold=pinned.get("cat_threshold"),
        )
        judged = []
        for column, spec in self.schema.items():
            kind = ColumnType.Numerical if spec["kind"] == "number" else ColumnType.Categorical
            method = options.get_feature_stattest_func(column, kind.value)
            threshold = options.get_threshold(column, kind.value)
            reference = self.reference[column].replace([-np.inf, np.inf], np.nan).dropna()
            current = self.current[column].replace([-np.inf, np.inf], np.nan).dropna()
            if reference.empty or current.empty:
                which = "reference" if reference.empty else "current batch"
                raise DataError(
                    f"column {column!r}: every value in the {which} is missing or infinite, so there is "
                    "nothing to compare its drift on; fix the data that feeds it"
                )
            test = get_stattest(reference, current, kind, method)
            found = test(reference, current, kind, threshold)
            judged.append(
                ColumnDrift(
                    column=column,
                    # the preset's ValueDrift keeps a pinned method's name, else shows the one Evidently chose
                    method=str(method) if method else test.display_name,
                    score=float(found.drift_score),
                    threshold=float(found.actual_threshold),
                    drifted=bool(found.drifted),
                )
            )
        return judged

    def snapshot(self) -> Any:
        """Evidently's DataDriftPreset report on the samples (with its tests): what the HTML is made of."""
        from evidently import DataDefinition, Report
        from evidently import Dataset as EvidentlyDataset
        from evidently.presets import DataDriftPreset

        columns = list(self.schema)
        definition = DataDefinition(
            numerical_columns=[c for c in columns if self.schema[c]["kind"] == "number"],
            categorical_columns=[c for c in columns if self.schema[c]["kind"] == "category"],
        )
        preset = DataDriftPreset(columns=columns, drift_share=self.threshold, **self.pinned)
        return Report([preset], include_tests=True).run(
            current_data=EvidentlyDataset.from_pandas(self.current, data_definition=definition),
            reference_data=EvidentlyDataset.from_pandas(self.reference, data_definition=definition),
        )


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


def save_report(report: DriftReport, storage: Storage, when: datetime) -> str:
    """Evidently's HTML report (built now: DriftReport.snapshot) under `reports/` in the store, where every
    machine's runs put theirs (a worker's own disk goes with its pod); the key, partitioned by day like the
    request log. Written create-only with a random suffix, so two runs in the same second never overwrite
    each other."""
    html = report.snapshot().get_html_str(as_iframe=False).encode()
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
