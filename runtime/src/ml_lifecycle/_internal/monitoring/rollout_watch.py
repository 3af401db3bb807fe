"""The watch after rollout: is the model promoted last doing worse, live, than the one it replaced?

The gate judges a candidate on held-out rows before it is promoted; this watch judges it on what it really
served afterwards. For `rollout.watch_hours` after the latest promotion (the alias record's last entry),
each monitor run compares the live model with the one before it in the record on:

- **performance**: the primary metric (model.py's PRIMARY_METRIC, in its direction) of both models on the
  same rows: the labelled rows of the request log the live model served (labels.join, the join the
  monitor and training use), scored with its logged answers and with the previous model's answers for
  the same logged features; worse only when the live model trails by more than the drop allowed with
  `rollout.confidence` (a paired bootstrap over those rows), so noisy labels do not roll back a better one;
- **5xx share** and **p99 latency** per model version, from the service's /metrics (counted since the
  service started, summed over its workers; p99 interpolated in the latency histogram's buckets as
  Prometheus' histogram_quantile does). When /metrics cannot be read the watch says so and judges on the
  rest;
- **prediction distribution** per version: reported, never a reason to roll back (a new model may rightly
  predict differently).

Each judged evidence needs `rollout.min_rows` rows (labelled rows the live model served for performance,
requests on both sides for the service's figures), else it is "not enough evidence yet". Worse beyond its
threshold on any of them is the verdict "roll back", with a reason naming the evidence and its figures; the
monitor flow then rolls back (flows/monitor.py). A model put back by a rollback is not watched against the
one before it: going back was the decision, and judging it again could roll back further than anyone meant.

Plain functions and small dataclasses: the decisions are unit-tested on synthetic windows and metrics text.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import bentoml
import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from .. import tables
from ..config import PACKAGE, Settings
from ..registry import aliases, store
from ..tables import DataError
from ..training.metrics import Metric, compare, primary_metric
from . import served_traffic

State = Literal["not watched", "healthy", "roll back", "not enough evidence"]
# judged: enough rows on both sides and compared with its threshold; reported: shown, never judged
EvidenceState = Literal["worse", "ok", "not enough evidence", "unavailable", "reported"]

# The service's metrics (serving/service.py) the watch reads, without the package prefix.
REQUESTS_METRIC = "prediction_requests_total"
LATENCY_METRIC = "prediction_latency_seconds"
ERROR_OUTCOME = "error"  # outcomes are ok | refused | shed | error; error is a 5xx answer
METRICS_TIMEOUT_SECONDS = 10.0
QUANTILE = 0.99


@dataclass(frozen=True)
class Evidence:
    """One comparison of the live model with the previous one; `detail` says it with the figures."""

    name: str
    state: EvidenceState
    detail: str
    live: Any = None
    previous: Any = None
    live_rows: int = 0
    previous_rows: int = 0


@dataclass(frozen=True)
class WatchVerdict:
    """What the watch found; `reason` starts with "automatic: " when the verdict is to roll back."""

    state: State
    reason: str
    live: str | None = None
    previous: str | None = None
    promoted_at: str | None = None
    watch_until: str | None = None
    evidence: list[Evidence] = field(default_factory=list)

    @property
    def roll_back(self) -> bool:
        return self.state == "roll back"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- who is watched ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """The live model and the one it replaced, as the alias record has them."""

    live: dict[str, Any]
    previous: dict[str, Any]
    promoted_at: datetime
    watch_until: datetime


def watched_pair(record: aliases.AliasRecord, now: datetime, watch_hours: float) -> Pair | str:
    """The pair to compare, or why nothing is watched (no watch configured, no previous model, the watch
    period over, the live model restored by a rollback)."""
    if watch_hours <= 0:
        return "rollout.watch_hours is 0: no watch after rollout, no automatic rollback"
    if not record.history:
        return "no production model yet"
    live = record.history[-1]
    if len(record.history) < 2:
        return f"{live['tag']} is the first production model: there is no previous model to compare with"
    promoted_at = when(live["since"])
    last_rollback = max((when(e["since"]) for e in record.rolled_back), default=None)
    if last_rollback is not None and last_rollback > promoted_at:
        return (
            f"{live['tag']} was put back by a rollback at {last_rollback:%Y-%m-%d %H:%M} UTC; "
            "the watch follows promotions only"
        )
    until = promoted_at + timedelta(hours=watch_hours)
    if now >= until:
        return (
            f"{live['tag']} was promoted at {promoted_at:%Y-%m-%d %H:%M} UTC, more than rollout.watch_hours "
            f"({watch_hours:g} h) ago: its watch is over"
        )
    return Pair(live=live, previous=record.history[-2], promoted_at=promoted_at, watch_until=until)


# --- performance on labelled rows, per version ---------------------------------------------------------


def rows_of(window: served_traffic.Window, version: str) -> served_traffic.Window:
    """The part of the window that `version` predicted (positions renumbered from 0)."""
    return window.select((window.model_versions == version).to_numpy())


def classes_of(window: served_traffic.Window) -> list[str] | None:
    """The classes the model gave probabilities for (None for regression or without probabilities)."""
    if window.probabilities is None:
        return None
    present = window.probabilities.notna().any()
    return [str(c) for c in window.probabilities.columns if present[c]]


def compare_performance(
    window: served_traffic.Window,
    labels: pd.DataFrame | None,
    live: str,
    previous: Any,
    metric: Metric,
    min_rows: int,
    max_drop: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> Evidence:
    """Both models on the same rows: the labelled rows the live model served, scored with what it answered
    (the request log) and with what the previous model (`previous`, a registered model) answers for the
    same logged features. Worse only when the live model trails by more than `max_drop` with `confidence`
    (the whole interval of a paired bootstrap over those rows below -max_drop), so label noise on a few
    rows does not roll back a better model."""
    if labels is None:
        return Evidence("performance", "not enough evidence", "no labels yet (monitoring.labels_path)")
    part = rows_of(window, live)
    # The one join on the whole window, then the live model's rows: the rows the monitor and training see.
    found = served_traffic.labelled(window, labels, metric, classes_of(part), live) if len(part) else None
    rows = len(found) if found is not None else 0
    if found is None or found.output is None or rows < min_rows:
        evidence = partial_evidence("performance", None, None, rows, rows)
        note = f"; {found.note}" if found is not None and found.note else ""
        return evidence(
            "not enough evidence",
            f"{metric.name}: not enough evidence yet ({rows} labelled rows served by the live model; "
            f"rollout.min_rows is {min_rows}){note}",
        )
    try:
        served = window.features.iloc[found.positions].reset_index(drop=True)
        features = tables.conform(served, previous.schema)
        before = metric.output(previous.pipeline, features)
        result = compare(metric, found.truth, found.output, before, confidence, seed)
    except ValueError as exc:  # one class only among the labels, or rows the previous model cannot read
        evidence = partial_evidence("performance", None, None, rows, rows)
        return evidence("not enough evidence", f"{metric.name} cannot be compared on these rows: {exc}")
    evidence = partial_evidence("performance", result.first, result.second, rows, rows)
    detail = (
        f"{metric.name} {result.first:.3f} vs {result.second:.3f} for the previous model on the same "
        f"{rows} labelled rows; difference {result.interval()}"
    )
    if result.surely_worse(by=max_drop):
        return evidence("worse", f"{detail}: worse by more than rollout.max_metric_drop {max_drop:g}")
    return evidence("ok", f"{detail}: not surely worse by more than rollout.max_metric_drop {max_drop:g}")


def partial_evidence(name: str, live: Any, previous: Any, live_rows: int, previous_rows: int) -> Any:
    """An Evidence maker with the figures filled in, waiting for its state and detail."""

    def make(state: EvidenceState, detail: str) -> Evidence:
        return Evidence(name, state, detail, live, previous, live_rows, previous_rows)

    return make


def shortfall(live_rows: int, previous_rows: int, min_rows: int, what: str) -> str:
    """Why there is not enough to judge yet ("" when both sides have min_rows)."""
    if live_rows >= min_rows and previous_rows >= min_rows:
        return ""
    return (
        f"not enough evidence yet ({live_rows} {what} for the live model and {previous_rows} for the "
        f"previous one; rollout.min_rows is {min_rows})"
    )


# --- the service's /metrics ---------------------------------------------------------------------------


@dataclass
class Served:
    """One model version's figures on /metrics: answers by outcome and the latency histogram."""

    outcomes: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (le) -> cumulative count

    @property
    def requests(self) -> int:
        return int(sum(self.outcomes.values()))

    @property
    def error_share(self) -> float | None:
        return self.outcomes.get(ERROR_OUTCOME, 0.0) / self.requests if self.requests else None

    @property
    def observed(self) -> int:
        """Requests in the latency histogram (its +Inf bucket)."""
        return int(self.buckets.get(math.inf, 0.0))


def parse_metrics(text: str, package: str = PACKAGE) -> dict[str, Served]:
    """Per model version, the request outcomes and the latency buckets on the service's /metrics text."""
    requests, buckets = f"{package}_{REQUESTS_METRIC}", f"{package}_{LATENCY_METRIC}_bucket"
    served: dict[str, Served] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            version = sample.labels.get("model_version")
            if version is None or sample.name not in (requests, buckets):
                continue
            figures = served.setdefault(version, Served())
            if sample.name == requests:
                outcome = sample.labels.get("outcome", "ok")
                figures.outcomes[outcome] = figures.outcomes.get(outcome, 0.0) + sample.value
            else:
                bound = float(sample.labels["le"])
                figures.buckets[bound] = figures.buckets.get(bound, 0.0) + sample.value
    return served


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram (upper bound -> count), interpolated linearly within its
    bucket as PromQL's histogram_quantile does; the highest finite bound when it falls in the +Inf bucket.
    None where PromQL gives NaN: no +Inf bucket, fewer than two buckets, no observations."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf or buckets[math.inf] <= 0:
        return None
    counts = list(itertools.accumulate((buckets[b] for b in bounds), max))  # made monotonic, as PromQL does
    rank = q * counts[-1]
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    lower, below = (bounds[index - 1], counts[index - 1]) if index else (0.0, 0.0)
    inside = counts[index] - below
    return lower + (bounds[index] - lower) * ((rank - below) / inside if inside else 0.0)


def compare_error_share(
    live: Served | None, previous: Served | None, min_rows: int, max_increase: float
) -> Evidence:
    """Worse when the live model's share of 5xx answers exceeds the previous one's by more than
    `max_increase` (absolute)."""
    now, before = live or Served(), previous or Served()
    evidence = partial_evidence(
        "5xx share", now.error_share, before.error_share, now.requests, before.requests
    )
    short = shortfall(now.requests, before.requests, min_rows, "requests")
    if short:
        return evidence("not enough evidence", f"5xx share: {short}")
    assert now.error_share is not None and before.error_share is not None  # requests >= min_rows >= 1
    increase = now.error_share - before.error_share
    detail = (
        f"5xx share {now.error_share:.2%} of {now.requests} requests vs {before.error_share:.2%} of "
        f"{before.requests} for the previous model"
    )
    if increase > max_increase:
        return evidence(
            "worse", f"{detail} (increase {increase:.3f} > rollout.max_error_rate_increase {max_increase:g})"
        )
    return evidence("ok", f"{detail} (within rollout.max_error_rate_increase {max_increase:g})")


def compare_p99(live: Served | None, previous: Served | None, min_rows: int, max_ratio: float) -> Evidence:
    """Worse when the live model's p99 latency is more than `max_ratio` times the previous one's."""
    now, before = live or Served(), previous or Served()
    p99_now, p99_before = (
        histogram_quantile(QUANTILE, now.buckets),
        histogram_quantile(QUANTILE, before.buckets),
    )
    evidence = partial_evidence("p99 latency", p99_now, p99_before, now.observed, before.observed)
    short = shortfall(now.observed, before.observed, min_rows, "requests")
    if short:
        return evidence("not enough evidence", f"p99 latency: {short}")
    if p99_now is None or p99_before is None or p99_before <= 0:
        return evidence("not enough evidence", "p99 latency: the histogram has no usable buckets")
    ratio = p99_now / p99_before
    detail = (
        f"p99 latency {p99_now * 1000:.0f} ms over {now.observed} requests vs {p99_before * 1000:.0f} ms "
        "for the previous model"
    )
    if ratio > max_ratio:
        return evidence("worse", f"{detail} (ratio {ratio:.2f} > rollout.max_p99_ratio {max_ratio:g})")
    return evidence("ok", f"{detail} (ratio {ratio:.2f}, within rollout.max_p99_ratio {max_ratio:g})")


# --- prediction distribution (reported only) ----------------------------------------------------------


def distribution(predictions: pd.Series, task_type: str) -> dict[str, float]:
    """Shares of each predicted class, or a regression's mean and deciles."""
    if predictions.empty:
        return {}
    if task_type == "regression":
        values = pd.to_numeric(predictions, errors="coerce").dropna()
        if values.empty:
            return {}
        deciles = {f"p{q}": float(values.quantile(q / 100)) for q in (10, 50, 90)}
        return {"mean": float(values.mean()), **deciles}
    shares = predictions.astype(str).value_counts(normalize=True).sort_index()
    return {str(label): round(float(share), 4) for label, share in shares.items()}


def compare_predictions(
    window: served_traffic.Window, live: str, previous: str, task_type: str, min_rows: int
) -> Evidence:
    """What each version predicted: shown in the verdict and the artifact, never a reason to roll back."""
    now, before = rows_of(window, live).predictions, rows_of(window, previous).predictions
    evidence = partial_evidence(
        "predictions", distribution(now, task_type), distribution(before, task_type), len(now), len(before)
    )
    short = shortfall(len(now), len(before), min_rows, "rows")
    if short:
        return evidence("not enough evidence", f"predictions: {short} (reported only)")
    return evidence(
        "reported",
        f"predictions of the live model: {format_distribution(distribution(now, task_type))}; previous: "
        f"{format_distribution(distribution(before, task_type))} (reported only)",
    )


def format_distribution(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in values.items()) or "none"


# --- the verdict --------------------------------------------------------------------------------------

JUDGED = ("performance", "5xx share", "p99 latency")


def decide(pair: Pair, evidence: list[Evidence]) -> WatchVerdict:
    """Roll back when any judged evidence is worse; healthy when at least one was judged and none is worse;
    else not enough evidence yet."""
    live, previous = pair.live["tag"], pair.previous["tag"]
    verdict = partial_verdict(pair, evidence)
    worse = [e for e in evidence if e.state == "worse"]
    if worse:
        return verdict("roll back", "automatic: " + "; ".join(e.detail for e in worse))
    judged = [e.name for e in evidence if e.state == "ok"]
    waiting = [e.detail for e in evidence if e.name in JUDGED and e.state != "ok"]
    if not judged:
        return verdict("not enough evidence", f"{live} vs {previous}: " + "; ".join(waiting))
    reason = f"{live} is not worse than {previous} on {', '.join(judged)}"
    return verdict("healthy", reason + ("; not judged: " + "; ".join(waiting) if waiting else ""))


def partial_verdict(pair: Pair, evidence: list[Evidence]) -> Any:
    def make(state: State, reason: str) -> WatchVerdict:
        return WatchVerdict(
            state,
            reason,
            live=pair.live["tag"],
            previous=pair.previous["tag"],
            promoted_at=pair.promoted_at.isoformat(),
            watch_until=pair.watch_until.isoformat(),
            evidence=evidence,
        )

    return make


def when(text: str) -> datetime:
    """A time from the alias record; one written without a zone is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- the watch, reading the record, the request log, the labels and /metrics ---------------------------


def metrics_url(settings: Settings) -> str:
    base = settings.rollout.service_url or f"http://{settings.serving.host}:{settings.serving.port}"
    return base.rstrip("/") + "/metrics"


def fetch_metrics(url: str) -> str:
    response = httpx.get(url, timeout=METRICS_TIMEOUT_SECONDS)
    response.raise_for_status()
    return response.text


def watch(settings: Settings, now: datetime | None = None) -> WatchVerdict:
    """The watch's verdict on the latest promotion; IO here, the decisions in the functions above."""
    options = settings.rollout
    now = now or datetime.now(UTC)
    pair = watched_pair(aliases.read(settings), now, options.watch_hours)
    if isinstance(pair, str):
        return WatchVerdict("not watched", pair)
    live, previous = pair.live["tag"], pair.previous["tag"]
    start = when(pair.previous["since"])
    window = served_traffic.read_window(settings, start, now)
    task_type = settings.data.task_type
    try:
        labels = served_traffic.read_labels(settings, settings.data.target_column, task_type)
        before = store.load(previous, settings)
    except DataError as exc:
        performance = Evidence("performance", "unavailable", f"the labels cannot be read: {exc}")
    except bentoml.exceptions.NotFound:
        performance = Evidence("performance", "unavailable", f"{previous} is no longer in the model store")
    else:
        performance = compare_performance(
            window,
            labels,
            live,
            before,
            primary_metric(task_type),
            options.min_rows,
            options.max_metric_drop,
            options.confidence,
            settings.data.seed,
        )
    evidence = [performance]
    url = metrics_url(settings)
    try:
        served = parse_metrics(fetch_metrics(url))
    except (httpx.HTTPError, ValueError) as exc:
        problem = (
            f"the service's metrics at {url} could not be read ({type(exc).__name__}: {exc}); "
            "judged on the rest"
        )
        evidence += [Evidence(name, "unavailable", problem) for name in ("5xx share", "p99 latency")]
    else:
        evidence += [
            compare_error_share(
                served.get(live), served.get(previous), options.min_rows, options.max_error_rate_increase
            ),
            compare_p99(served.get(live), served.get(previous), options.min_rows, options.max_p99_ratio),
        ]
    evidence.append(compare_predictions(window, live, previous, task_type, options.min_rows))
    return decide(pair, evidence)


# --- the artifact -------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    """The `rollout-watch` artifact: the verdict, what happened, and the evidence per version."""
    lines = [f"# Watch after rollout: {result['state']}", "", result["reason"]]
    if result.get("retired"):
        lines += [
            "",
            f"Rolled back: `{result['retired']}` is retired, `{result['restored']}` is production again.",
        ]
    if result.get("rollback_error"):
        lines += ["", f"**Rollback failed:** {result['rollback_error']}"]
    if result.get("live"):
        lines += [
            "",
            f"Live model `{result['live']}` (promoted {result['promoted_at']}, watched until "
            f"{result['watch_until']}) against the previous model `{result['previous']}`.",
        ]
    if result.get("evidence"):
        lines += [
            "",
            "| Evidence | Live | Previous | Rows (live / previous) | State |",
            "|---|---|---|---|---|",
        ]
        for item in result["evidence"]:
            live, previous = (show(item["name"], item[side]) for side in ("live", "previous"))
            rows = f"{item['live_rows']} / {item['previous_rows']}"
            lines.append(f"| {item['name']} | {live} | {previous} | {rows} | {item['state']} |")
        lines += ["", *(f"- **{item['name']}**: {item['detail']}" for item in result["evidence"])]
    return "\n".join(lines)


def show(name: str, value: Any) -> str:
    if value is None or value == {}:
        return "n/a"
    if isinstance(value, dict):
        return format_distribution(value)
    if name == "5xx share":
        return f"{value:.2%}"
    if name == "p99 latency":
        return f"{value * 1000:.0f} ms"
    return f"{value:.4g}"
