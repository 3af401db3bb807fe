"""Verdicts as the monitor makes them, for the tests of what reads one (alerts, gauges, events), which need
no data, model or server."""

from dataclasses import replace

from ml_lifecycle._internal.monitoring.drift import ColumnDrift, DriftResult
from ml_lifecycle._internal.monitoring.verdict import Performance, Verdict, too_few_rows

# The keys of the mapping the 2.0.0 monitor flow returned, printed from a run on main before the verdict
# became a type (runtime/tests/flows/test_flows.py, a drifted file batch and an empty window).
KEYS_2_0_0 = {
    "alerted", "columns", "drift_share", "drifted", "drifted_columns", "event_emitted", "labels",
    "log_warnings", "model_version", "n_current", "n_current_compared", "n_reference", "n_reference_compared",
    "performance", "prediction_drift", "pushed", "quality", "report", "report_url", "rollout", "signal_lost",
    "skipped_lines", "skipped_where", "source", "threshold", "window",
}  # fmt: skip
KEYS_2_0_0_TOO_FEW_ROWS = KEYS_2_0_0 - {
    "alerted", "labels", "n_current_compared", "n_reference", "n_reference_compared",
}  # fmt: skip
ROLLOUT_KEYS_2_0_0 = {"evidence", "live", "previous", "promoted_at", "reason", "state", "watch_until"}

VERSION = "my_ml_project:abc123"
SOURCE = "requests window 2026-11-25T10:00Z..2026-11-26T10:00Z"
COLUMNS = [
    ColumnDrift("a", "wasserstein", 0.31, 0.1, True),
    ColumnDrift("b", "jensenshannon", 0.2, 0.1, True),
    ColumnDrift("c", "wasserstein", 0.01, 0.1, False),
]
PREDICTION = ColumnDrift("_prediction", "jensenshannon", 0.2, 0.1, True)
WORSE = Performance(metric="roc_auc", value=0.71, threshold=0.8, below_threshold=True, n_labelled=300)


def drift_result(
    share: float = 0.4,
    columns: list[ColumnDrift] | None = None,
    prediction: ColumnDrift | None = PREDICTION,
    n_current: int = 1234,
    drifted: list[str] | None = None,
) -> DriftResult:
    """A drift result at threshold 0.3 (drifted from a share of 0.3 up)."""
    columns = COLUMNS if columns is None else columns
    drifted = [c.column for c in columns if c.drifted] if drifted is None else drifted
    return DriftResult(share, drifted, 0.3, 5000, n_current, columns, 5000, n_current, prediction=prediction)


def drifted(**changes) -> Verdict:
    """Drift in two of three columns, and performance below its threshold, with its event confirmed."""
    verdict = Verdict(
        VERSION,
        SOURCE,
        1234,
        drift=drift_result(),
        performance=WORSE,
        report="/srv/project/reports/drift-20261126T100000Z.html",
        report_url="http://reports.internal/drift-20261126T100000Z.html",
        event_emitted=True,
    )
    return replace(verdict, **changes)


def quiet(**changes) -> Verdict:
    """No drift, no labels: nothing to ask for."""
    no_drift = [replace(c, drifted=False, score=0.01) for c in COLUMNS]
    return drifted(
        **{"drift": drift_result(0.0, no_drift, None), "performance": None, "event_emitted": False} | changes
    )


def not_enough(rows: int = 80) -> Verdict:
    """A window with fewer rows than monitoring.min_rows (100): no drift result."""
    return Verdict(VERSION, SOURCE, rows, too_few_rows=too_few_rows(SOURCE, rows, 100))
