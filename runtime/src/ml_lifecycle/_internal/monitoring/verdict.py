"""The monitor's verdict: what one run found and what it did about it, as one type.

monitoring/check.py builds it (the only place), the flow fills in what each later step did (report, event,
alert, gauges, the watch after rollout), and alerts, the Pushgateway and the `drift-report` artifact read its
attributes. Users get `as_dict()`, the plain JSON-able mapping the flow returns, whose keys stay those of
2.0.0 (runtime/tests/monitoring/test_verdict.py holds the list). A batch with too few rows to judge is a
verdict too: no drift result, and `too_few_rows` says why.

Plain frozen dataclasses, as drift.py and rollout_watch.py have theirs; no IO here, so alerts and gauges can
be unit-tested on a verdict made in a line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings
    from .drift import ColumnDrift, DriftResult
    from .labels import LabelReadReport
    from .rollout_watch import Evidence, WatchVerdict
    from .served_traffic import Window


@dataclass(frozen=True)
class Performance:
    """The primary metric on the window's labelled rows (served_traffic.performance's figures)."""

    metric: str
    value: float | None
    threshold: float | None
    below_threshold: bool
    n_labelled: int
    note: str | None = None

    def markdown(self) -> str:
        """The artifact's section on labelled traffic."""
        value = "n/a" if self.value is None else f"{self.value:.4f}"
        text = (
            f"\n\n## Performance on labelled traffic\n\n{self.metric} = {value} on {self.n_labelled} "
            "labelled rows"
            + (f", threshold {self.threshold}" if self.threshold else "")
            + (" (**below threshold**)" if self.below_threshold else "")
        )
        return text + (f"\n\n{self.note}" if self.note else "")


@dataclass(frozen=True)
class Coverage:
    """The span of the request log a verdict rests on, against the window asked for (times in ISO 8601)."""

    start: str
    end: str
    requested_hours: float
    covered_hours: float
    oldest_record: str | None
    complete: bool
    note: str | None


@dataclass(frozen=True)
class LogReport:
    """What the verdict says about the request log it read: the window it really covers (None for a file),
    the lines that were no record, and the warnings both deserve."""

    window: Coverage | None = None
    skipped_lines: int = 0
    skipped_where: list[str] = field(default_factory=list)  # the first 20, as file:line and why
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": asdict(self.window) if self.window else None,
            "skipped_lines": self.skipped_lines,
            "skipped_where": list(self.skipped_where),
            "log_warnings": list(self.warnings),
        }

    def markdown(self) -> str:
        """The artifact's warnings about the log (short window, skipped lines); empty when there are none."""
        if not self.warnings:
            return ""
        return "\n\n## Request log\n\n" + "\n".join(f"- **Warning:** {w}" for w in self.warnings)


def log_report(settings: Settings, window: Window | None) -> LogReport:
    """What a verdict says about the window it was read from (nothing for a file)."""
    from ..serving.request_log import describe_bad_lines

    if window is None:
        return LogReport()
    warnings, note = [], None
    if not window.complete:
        note = f"The request log {window.coverage()}: {shortfall_cause(settings, window)}"
        warnings.append(note)
    if window.bad_lines:
        warnings.append(
            f"{describe_bad_lines(list(window.bad_lines))}. They are no records (a write torn "
            "by a killed service or a full disk, or an edit); the rest of the log was read."
        )
    coverage = Coverage(
        start=window.start.isoformat(),
        end=window.end.isoformat(),
        requested_hours=round(window.requested_hours, 3),
        covered_hours=round(window.covered_hours, 3),
        oldest_record=window.oldest_record.isoformat() if window.oldest_record else None,
        complete=window.complete,
        note=note,
    )
    where = [str(bad) for bad in window.bad_lines[:20]]
    return LogReport(coverage, len(window.bad_lines), where, warnings)


def shortfall_cause(settings: Settings, window: Window) -> str:
    """Why the log does not reach back to the window's start, as far as its files tell."""
    serving = settings.serving
    if window.oldest_record is None:
        return "it has no records yet."
    if window.requested_hours > serving.request_log_retention_hours:
        return (
            f"the log is kept serving.request_log_retention_hours = "
            f"{serving.request_log_retention_hours:g} h, less than the window asked for."
        )
    return "there are no older records (the service has been logging only since then)."


def too_few_rows(source: str, rows: int, minimum: int) -> str:
    """Why a batch gets no drift verdict, and what to change."""
    return (
        f"{source}: {rows} rows, fewer than monitoring.min_rows ({minimum}); no drift verdict. "
        "Send more traffic, widen monitoring.window_hours, or lower monitoring.min_rows."
    )


# The rollout result's keys that exist only once a rollback was tried or announced (as in 2.0.0).
ROLLBACK_FIELDS = ("retired", "restored", "rollback_error", "event_emitted", "alerted")


@dataclass(frozen=True)
class Rollout:
    """The watch after rollout's verdict (rollout_watch.WatchVerdict) and what the run did about it: the
    rollback (`state` becomes "rolled back", "already rolled back" or "rollback failed"), its event and
    its alert."""

    state: str
    reason: str
    live: str | None = None
    previous: str | None = None
    promoted_at: str | None = None
    watch_until: str | None = None
    evidence: list[Evidence] = field(default_factory=list)
    retired: str | None = None
    restored: str | None = None
    rollback_error: str | None = None
    event_emitted: bool | None = None  # None: nothing was announced
    alerted: bool | None = None

    @classmethod
    def watched(cls, watch: WatchVerdict) -> Rollout:
        """The watch's verdict, field for field (its fields are the first ones here), before any rollback."""
        found = {item.name: getattr(watch, item.name) for item in fields(watch)}
        return cls(**found | {"evidence": list(watch.evidence)})

    @property
    def to_announce(self) -> bool:
        """A rollback happened or should have: the team hears of it either way."""
        return self.state in ("rolled back", "rollback failed")

    def as_dict(self) -> dict[str, Any]:
        watched = [item.name for item in fields(self) if item.name not in ROLLBACK_FIELDS]
        found = {name: getattr(self, name) for name in watched}
        found["evidence"] = [asdict(item) for item in self.evidence]
        return found | {key: getattr(self, key) for key in ROLLBACK_FIELDS if getattr(self, key) is not None}


@dataclass(frozen=True)
class Verdict:
    """One monitor run's verdict on a batch (the request log's window, or a file) against the production
    model's training reference. Either `drift` holds the drift result or `too_few_rows` says why not."""

    model_version: str
    source: str
    n_current: int
    log: LogReport = field(default_factory=LogReport)
    drift: DriftResult | None = None
    too_few_rows: str | None = None
    performance: Performance | None = None
    labels: LabelReadReport | None = None
    # What the run did with the verdict, filled in by the flow as each step is done.
    report: str | None = None
    report_url: str | None = None
    event_emitted: bool = False
    signal_lost: str | None = None
    alerted: bool = False
    pushed: bool = False
    rollout: Rollout | None = None

    def __post_init__(self) -> None:
        if (self.drift is None) == (self.too_few_rows is None):
            raise ValueError("a verdict holds a drift result or the reason it has none, exactly one")

    @property
    def drifted(self) -> bool:
        return self.drift is not None and bool(self.drift.drifted)

    @property
    def drift_share(self) -> float:
        return self.drift.drift_share if self.drift else 0.0

    @property
    def threshold(self) -> float | None:
        return self.drift.threshold if self.drift else None

    @property
    def drifted_columns(self) -> list[str]:
        return list(self.drift.drifted_columns) if self.drift else []

    @property
    def columns(self) -> list[ColumnDrift]:
        return list(self.drift.columns) if self.drift else []

    @property
    def prediction_drift(self) -> ColumnDrift | None:
        return self.drift.prediction if self.drift else None

    @property
    def performance_below(self) -> bool:
        return self.performance is not None and self.performance.below_threshold

    def reasons(self) -> list[str]:
        """Why this verdict asks for retraining (empty: it does not)."""
        found = []
        if self.drifted:
            found.append(f"drift: share {self.drift_share:.3f} of columns >= {self.threshold}")
        if self.performance is not None and self.performance.below_threshold:
            value = "n/a" if self.performance.value is None else f"{self.performance.value:.4f}"
            found.append(
                f"performance: {self.performance.metric} {value} worse than {self.performance.threshold}"
            )
        return found

    def warnings(self) -> list[str]:
        """What the run's log warns about: the request log, and labels that could not be used."""
        return self.log.warnings + (self.labels.warnings() if self.labels else [])

    def markdown(self, link: str = "") -> str:
        """The `drift-report` artifact; `link` points at the full Evidently report."""
        from .drift import markdown_summary

        if self.drift is None:
            return f"# Drift check: not enough data\n\n{self.too_few_rows}" + self.log.markdown()
        return (
            markdown_summary(self.drift, self.model_version, self.source)
            + (self.performance.markdown() if self.performance else "")
            + self.log.markdown()
            + (self.labels.markdown() if self.labels else "")
            + (f"\n\nFull report: {link}" if link else "")
        )

    def as_dict(self) -> dict[str, Any]:
        """The plain mapping the flow returns: the same keys whether or not there were rows enough."""
        drift = self.drift
        prediction = self.prediction_drift
        return {
            "model_version": self.model_version,
            "source": self.source,
            "n_current": self.n_current,
            "n_reference": drift.n_reference if drift else None,
            "n_current_compared": drift.n_current_compared if drift else None,
            "n_reference_compared": drift.n_reference_compared if drift else None,
            "drift_share": self.drift_share,
            "drifted": self.drifted,
            "threshold": self.threshold,
            "drifted_columns": self.drifted_columns,
            "columns": [asdict(column) for column in self.columns],
            "prediction_drift": asdict(prediction) if prediction else None,
            "quality": asdict(drift.quality) if drift else {"too_few_rows": self.too_few_rows},
            "performance": asdict(self.performance) if self.performance else None,
            "labels": self.labels.as_dict() if self.labels else None,
            **self.log.as_dict(),
            "report": self.report,
            "report_url": self.report_url,
            "event_emitted": self.event_emitted,
            "signal_lost": self.signal_lost,
            "alerted": self.alerted,
            "pushed": self.pushed,
            "rollout": self.rollout.as_dict() if self.rollout else None,
        }
