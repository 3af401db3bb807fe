"""The quality gate between a registered model and production, and the way back (rollback).

A candidate becomes production only when it beats the current production model on the same rows by more
than `registry.promotion_margin` on the primary metric (model.py's PRIMARY_METRIC, in its direction) and is
not surely worse by more than the margin on the other slice (the whole `registry.gate_confidence` interval
of a paired bootstrap over that slice's rows below -margin: a 0.003 loss on 114 noisy rows is noise), and,
when `registry.sensitive_column` is set, when
the gap of that metric between the column's groups stays within `registry.max_group_gap`. The pointer
changes by compare-and-swap of the alias record, and a verdict is written only against the production it
was judged against, so two flows promoting at once (on two machines) are judged one after the other
against the real production.

Two slices of rows (docs/training.md#the-gates-two-slices): the usual holdout of the configured data, and the
recent slice, the newest labelled production rows, held out by time (training/feedback.py). When the recent
slice has `feedback.gate_min_recent_rows` rows it decides, since it says how a model does now; else the
holdout decides.

A candidate whose feature schema differs from production's (a column added or gone, or of another kind) is
never promoted by the gate alone: the request API changes with it, and production may not even be able to
score the new holdout. It needs an explicit decision (`promote --tag T --accept-schema-change`).

A model taken out of production by a rollback is never promoted again by the gate alone, nor is a candidate
that predicts like it (the same class, or a close value, on `registry.retired_agreement` of the gate's
newest rows): a retrain on the same rows would otherwise bring it straight back under a new tag.

A candidate that passes is replayed against production on the newest recorded requests (registry/replay.py);
one that disagrees beyond `promotion.max_disagreement` or is slower beyond `promotion.max_latency_ratio` is
not promoted. `promote(judge_only=True)` reaches the verdict without changing production (a person decides:
promotion.mode approve or suggest), and `promote(judged=verdict)` promotes that verdict once approved, judging
the candidate again only when production changed meanwhile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from ..config import Settings
from ..storage import StorageError
from ..training.metrics import Metric, class_text, compare, primary_metric
from . import aliases, store


@dataclass(frozen=True)
class GateResult:
    candidate: str
    production: str | None
    metric: str
    candidate_score: float
    production_score: float | None
    margin: float
    passed: bool
    reason: str
    groups: list[dict[str, Any]] = field(default_factory=list)
    # How the candidate's feature schema differs from production's; empty when they agree.
    schema_changes: list[str] = field(default_factory=list)
    schema_change_accepted: bool = False
    # Each slice the models were scored on: name, rows, both scores, and whether it decided.
    slices: list[dict[str, Any]] = field(default_factory=list)
    # The replay of recorded requests (replay.Replay.as_dict()), when the candidate passed the rest.
    replay: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schema_changes(candidate: dict[str, dict[str, Any]], production: dict[str, dict[str, Any]]) -> list[str]:
    """What a client of the service would notice: columns added or gone, or of another kind. Categories and
    missing values are the data's, and change with every retraining."""
    changes = [f"column {c!r} is new" for c in candidate if c not in production]
    changes += [f"column {c!r} is gone" for c in production if c not in candidate]
    changes += [
        f"column {c!r} was a {production[c]['kind']}, is now a {spec['kind']}"
        for c, spec in candidate.items()
        if c in production and spec["kind"] != production[c]["kind"]
    ]
    return changes


def group_scores(
    pipeline: Any, features: pd.DataFrame, labels: pd.Series, column: str, task_type: str
) -> list[dict[str, Any]]:
    """The primary metric per group of the sensitive column; groups where it is undefined are listed too."""
    metric = primary_metric(task_type)
    if column not in features.columns:
        raise ValueError(
            f"registry.sensitive_column {column!r} is not a feature; columns are {list(features.columns)}"
        )
    rows = []
    for value, index in features.groupby(
        features[column].astype("object").fillna("<missing>")
    ).groups.items():
        part_x, part_y = features.loc[index], labels.loc[index]
        entry: dict[str, Any] = {"group": str(value), "rows": len(part_x), metric.name: None}
        if len(part_x) >= 2 and (task_type == "regression" or part_y.nunique() > 1):
            entry[metric.name] = metric.of(pipeline, part_x, part_y)
        rows.append(entry)
    return rows


def fairness_gap(groups: list[dict[str, Any]], metric: str) -> float:
    values = [g[metric] for g in groups if g[metric] is not None]
    return max(values) - min(values) if len(values) > 1 else 0.0


Rows = tuple[pd.DataFrame, pd.Series]


def compared_slice(
    name: str, rows: Rows, candidate: Any, production: Any, metric: Metric, settings: Settings
) -> dict[str, Any] | None:
    """Both models' primary metric on a slice's rows, and the candidate's gain with its interval (a paired
    bootstrap over the rows: a small slice gives a wide interval); None when it cannot be computed there (no
    rows, or one class only: ROC AUC needs two)."""
    features, labels = rows
    if features.empty:
        return None
    truth = labels.map(class_text) if metric.classifies else labels
    try:
        found = compare(
            metric,
            truth,
            metric.output(candidate, features),
            metric.output(production, features),
            settings.registry.gate_confidence,
            settings.data.seed,
        )
    except ValueError:
        return None
    return {
        "slice": name,
        "rows": found.rows,
        "candidate": found.first,
        "production": found.second,
        "gain": found.difference,
        "gain_low": found.low,
        "gain_high": found.high,
        "decides": False,
    }


def decide(
    holdout: dict[str, Any], recent: dict[str, Any] | None, settings: Settings, metric: Metric
) -> tuple[bool, str]:
    """Win on the deciding slice by more than the margin; on the other, be worse by more than the margin
    with registry.gate_confidence (the whole interval of the gain below -margin) and the gate refuses: a
    small slice's noise alone never blocks a candidate."""
    margin = settings.registry.promotion_margin
    recent_decides = recent is not None and recent["rows"] >= settings.feedback.gate_min_recent_rows
    deciding, other = (recent, holdout) if recent_decides and recent else (holdout, recent)
    deciding["decides"] = True
    passed = deciding["gain"] > margin
    verb = "beats" if passed else "does not beat"
    reason = (
        f"{metric.name} on the {deciding['slice']} ({deciding['rows']} rows) {deciding['candidate']:.4f} vs "
        f"{deciding['production']:.4f}: {verb} production by more than {margin}"
    )
    if other is not None:
        confidence = settings.registry.gate_confidence
        lost = other["gain_high"] < -margin
        passed = passed and not lost
        reason += (
            f"; on the {other['slice']} ({other['rows']} rows) {other['candidate']:.4f} vs "
            f"{other['production']:.4f} (gain {other['gain']:+.4f}, {confidence:.0%} interval "
            f"{other['gain_low']:+.4f} to {other['gain_high']:+.4f}): "
            + ("loses more" if lost else "does not surely lose more")
            + f" than {margin}"
        )
    return passed, reason


def judge(
    settings: Settings,
    candidate: store.RegisteredModel,
    production: store.RegisteredModel | None,
    features: pd.DataFrame,
    labels: pd.Series,
    *,
    accept_schema_change: bool = False,
    recent: Rows | None = None,
) -> GateResult:
    """The gate's verdict for a candidate against production on the same rows: the holdout, and the recent
    slice of labelled traffic when there is one.

    `accept_schema_change` is the explicit decision a schema change needs; without it such a candidate is not
    promoted, whatever its score."""
    task_type = candidate.metadata["task_type"]
    metric = primary_metric(task_type)
    margin = settings.registry.promotion_margin
    cand_score = metric.of(candidate.pipeline, features, labels)
    groups: list[dict[str, Any]] = []
    changes = schema_changes(candidate.schema, production.schema) if production else []
    verdict = partial(
        GateResult,
        candidate=candidate.tag,
        production=production.tag if production else None,
        metric=metric.name,
        candidate_score=cand_score,
        margin=margin,
        schema_changes=changes,
        schema_change_accepted=bool(changes) and accept_schema_change,
    )
    if settings.registry.sensitive_column:
        groups = group_scores(
            candidate.pipeline, features, labels, settings.registry.sensitive_column, task_type
        )
        gap = fairness_gap(groups, metric.name)
        if gap > settings.registry.max_group_gap:
            reason = (
                f"{metric.name} differs by {gap:.4f} between groups of "
                f"{settings.registry.sensitive_column!r}, more than registry.max_group_gap "
                f"{settings.registry.max_group_gap}"
            )
            return verdict(production_score=None, passed=False, reason=reason, groups=groups)
    if production is None:
        return verdict(production_score=None, passed=True, reason="no production model yet", groups=groups)
    if changes and not accept_schema_change:
        reason = (
            f"schema changed ({'; '.join(changes)}); promote explicitly with "
            f"`python -m {settings.project.package} promote --tag {candidate.tag} --accept-schema-change`"
        )
        return verdict(production_score=None, passed=False, reason=reason, groups=groups)
    try:
        prod_score = metric.of(production.pipeline, features, labels)
    except (KeyError, ValueError) as exc:  # the production model cannot read the new data's columns
        if not accept_schema_change:
            reason = (
                f"production cannot score the current holdout ({exc}); promote explicitly with "
                f"`python -m {settings.project.package} promote --tag {candidate.tag} --accept-schema-change`"
            )
            return verdict(production_score=None, passed=False, reason=reason, groups=groups)
        reason = f"schema change accepted: production cannot score the current holdout ({exc})"
        return verdict(production_score=None, passed=True, reason=reason, groups=groups)
    pipelines = candidate.pipeline, production.pipeline
    held = compared_slice("holdout", (features, labels), *pipelines, metric, settings)
    assert held is not None  # both models scored the holdout just above
    newest = compared_slice("recent slice", recent, *pipelines, metric, settings) if recent else None
    passed, reason = decide(held, newest, settings, metric)
    if changes:
        reason = f"schema change accepted; {reason}"
    slices = [held] + ([newest] if newest else [])
    return verdict(production_score=prod_score, passed=passed, reason=reason, groups=groups, slices=slices)


def promote(
    settings: Settings,
    candidate_tag: str,
    features: pd.DataFrame,
    labels: pd.Series,
    reason: str,
    *,
    accept_schema_change: bool = False,
    allow_rolled_back: bool = False,
    recent: Rows | None = None,
    judge_only: bool = False,
    judged: GateResult | None = None,
) -> GateResult:
    """Judge the candidate against production and, when it passes, make it production: one change of the
    alias record by compare-and-swap (aliases.change), so the verdict is always against the production
    the record names when it is written; when another promote or rollback wrote first, the candidate is
    judged again against the new production.

    A model once rolled back is refused unless `allow_rolled_back` (a person's decision): no ping-pong
    between a retrain that promotes it and a watch that rolls it back.

    `judge_only`: the verdict, production unchanged. `judged`: a verdict reached before (and approved by a
    person), promoted as it is while production is still the one it was judged against."""
    candidate = store.load(candidate_tag, settings)
    rows = recent[0] if recent is not None and not recent[0].empty else features
    judged_by: dict[str | None, GateResult] = {}  # by production tag: a retry re-judges only a new production
    if judged is not None and judged.candidate == candidate.tag:
        judged_by[judged.production] = judged

    def decide_and_record(record: aliases.AliasRecord) -> GateResult:
        refused = refusal(settings, record, candidate, rows, allow_rolled_back)
        if refused:
            return GateResult(
                candidate=candidate.tag,
                production=record.production,
                metric=primary_metric(candidate.metadata["task_type"]).name,
                candidate_score=float("nan"),
                production_score=None,
                margin=settings.registry.promotion_margin,
                passed=False,
                reason=refused,
            )
        if record.production not in judged_by:
            production = store.load(record.production, settings) if record.production else None
            verdict = judge(
                settings,
                candidate,
                production,
                features,
                labels,
                accept_schema_change=accept_schema_change,
                recent=recent,
            )
            judged_by[record.production] = with_replay(settings, verdict, candidate, production, labels)
        result = judged_by[record.production]
        if result.passed and not judge_only:
            details: dict[str, Any] = {"metric": result.metric, "score": result.candidate_score}
            if result.schema_change_accepted:
                details["schema_changes"] = result.schema_changes
            record.history.append(aliases.entry(candidate.tag, reason, **details))
        return result

    return aliases.change(settings, decide_and_record)


def with_replay(
    settings: Settings,
    verdict: GateResult,
    candidate: store.RegisteredModel,
    production: store.RegisteredModel | None,
    labels: pd.Series,
) -> GateResult:
    """The verdict with the replay of recorded requests (registry/replay.py) when the candidate passed the
    rest against a production model; refused when the replay exceeds promotion.max_disagreement or
    promotion.max_latency_ratio. A request log that cannot be read skips the replay, saying so."""
    if not verdict.passed or production is None:
        return verdict
    # Here, not at the top: the service imports this module (rollback, the alias), never the request log's
    # reader and the label join the replay needs (tests: serving/test_service_imports.py).
    from . import replay as replays

    regression = candidate.metadata["task_type"] == "regression"
    # The target's spread on the gate's rows: the scale of a regression's tolerance.
    spread = float(np.nanstd(pd.to_numeric(labels, errors="coerce"))) if regression else 0.0
    try:
        found = replays.replay(settings, candidate, production, spread)
    except StorageError as exc:  # the store's request log unreadable now: judge on the rest, and say so
        found = replays.skipped(f"the request log could not be read ({exc})")
    limit = replays.limit_exceeded(
        found, settings.promotion.max_disagreement, settings.promotion.max_latency_ratio
    )
    if limit:
        return replace(
            verdict, replay=found.as_dict(), passed=False, reason=f"{verdict.reason}; refused by {limit}"
        )
    return replace(verdict, replay=found.as_dict())


def refusal(
    settings: Settings,
    record: aliases.AliasRecord,
    candidate: store.RegisteredModel,
    rows: pd.DataFrame,
    allow_rolled_back: bool,
) -> str:
    """Why the candidate is refused before it is scored ("" when it is not): it is production already, or
    it was rolled back, or it predicts like a model that was (unless a person allows rolled-back models)."""
    if record.production == candidate.tag:
        return "already production"
    package, tag = settings.project.package, candidate.tag
    override = f"`python -m {package} promote --tag {tag} --allow-rolled-back` promotes it"
    rolled_back = record.was_rolled_back(candidate.tag)
    if rolled_back and not allow_rolled_back:
        return (
            f"rolled back at {rolled_back['since']} ({rolled_back['reason']}); the gate never promotes a "
            f"rolled-back model again on its own: {override}"
        )
    twin = None if allow_rolled_back else retired_twin(settings, record, candidate, rows)
    if twin is not None:
        return (
            f"counts as {twin['tag']}, rolled back at {twin['since']} ({twin['reason']}): it predicts like "
            f"it on {twin['agreement']:.1%} of {len(rows)} recent rows (registry.retired_agreement "
            f"{settings.registry.retired_agreement:g}); {override}"
        )
    return ""


RETIRED_COMPARED = 3  # the newest rolled-back models a candidate is compared with


def agreement(first: Any, second: Any, rows: pd.DataFrame, task_type: str) -> float:
    """The share of rows on which two models predict alike: the same class, or values within 5% of the
    second model's spread of predictions."""
    one, two = first.predict(rows), second.predict(rows)
    if task_type == "classification":
        return float(np.mean(one.astype(str) == two.astype(str)))
    spread = float(np.std(two)) or 1.0
    return float(np.mean(np.abs(one.astype(float) - two.astype(float)) <= 0.05 * spread))


def retired_twin(
    settings: Settings, record: aliases.AliasRecord, candidate: store.RegisteredModel, rows: pd.DataFrame
) -> dict[str, Any] | None:
    """The rollback entry of a rolled-back model the candidate predicts like (with `agreement`), or None.
    A retired model no longer in the store, or that cannot read the rows, is not compared."""
    import bentoml

    if rows.empty:
        return None
    seen = set()
    for entry in reversed(record.rolled_back):
        if entry["tag"] in seen or entry["tag"] == candidate.tag:
            continue
        seen.add(entry["tag"])
        if len(seen) > RETIRED_COMPARED:
            break
        try:
            retired = store.load(entry["tag"], settings)
            share = agreement(candidate.pipeline, retired.pipeline, rows, candidate.metadata["task_type"])
        except (bentoml.exceptions.NotFound, KeyError, ValueError):
            continue
        if share >= settings.registry.retired_agreement:
            return entry | {"agreement": share}
    return None


class AlreadyRolledBack(LookupError):
    """The rollback asked for has been done already (by another run): nothing to do, nothing failed."""


def rollback(settings: Settings, reason: str = "manual", expected: str | None = None) -> tuple[str, str]:
    """Make the previous production model production again; returns (retired tag, restored tag). The retired
    model is recorded as rolled back, with `reason`, so the gate does not promote it again on its own.

    `expected`: roll back only if production is still this model (checked in the same compare-and-swap that
    writes the record), so an automatic rollback never retires a model promoted after it judged the one
    before."""

    def restore_previous(record: aliases.AliasRecord) -> tuple[str, str]:
        if expected is not None and record.production != expected:
            done = record.was_rolled_back(expected)
            if done is not None:
                raise AlreadyRolledBack(
                    f"{expected} was rolled back already at {done['since']} ({done['reason']}); production "
                    f"is {record.production}"
                )
            raise LookupError(f"production is {record.production}, not {expected}; nothing rolled back")
        if len(record.history) < 2:
            raise LookupError(
                f"nothing to roll back to: {len(record.history)} production model(s) recorded in "
                f"{aliases.where(settings)}"
            )
        retired, restored = record.history[-1]["tag"], record.history[-2]["tag"]
        try:
            store.ensure_local(settings, restored)  # here too, so the services find it when they swap
        except store.ModelNotFound as exc:
            raise LookupError(f"the previous production model {restored} is no longer in the store") from exc
        record.history.pop()
        record.rolled_back.append(aliases.entry(retired, reason))
        return retired, restored

    return aliases.change(settings, restore_previous)
