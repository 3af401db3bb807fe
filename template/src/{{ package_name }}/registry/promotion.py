"""The quality gate between a registered model and production, and the way back (rollback).

A candidate becomes production only when it beats the current production model on the same holdout rows by
more than `registry.promotion_margin` on the primary metric (ROC AUC, higher is better; RMSE, lower is
better), and, when `registry.sensitive_column` is set, when the gap of that metric between the column's
groups stays within `registry.max_group_gap`. The comparison and the change of the pointer happen under the
alias lock, so two flows promoting at once are judged one after the other against the real production.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import pandas as pd

from ..config import Settings
from ..model import PRIMARY_METRIC
from ..training.metrics import score
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def improvement(candidate: float, production: float, direction: str) -> float:
    """How much better the candidate is, positive when better, whatever the metric's direction."""
    return candidate - production if direction == "maximize" else production - candidate


def group_scores(
    pipeline: Any, features: pd.DataFrame, labels: pd.Series, column: str, task_type: str
) -> list[dict[str, Any]]:
    """The primary metric per group of the sensitive column; groups where it is undefined are listed too."""
    metric = PRIMARY_METRIC[task_type][0]
    if column not in features.columns:
        raise ValueError(
            f"registry.sensitive_column {column!r} is not a feature; columns are {list(features.columns)}"
        )
    rows = []
    for value, index in features.groupby(
        features[column].astype("object").fillna("<missing>")
    ).groups.items():
        part_x, part_y = features.loc[index], labels.loc[index]
        entry: dict[str, Any] = {"group": str(value), "rows": len(part_x), metric: None}
        if len(part_x) >= 2 and (task_type == "regression" or part_y.nunique() > 1):
            entry[metric] = score(pipeline, part_x, part_y, task_type)[metric]
        rows.append(entry)
    return rows


def fairness_gap(groups: list[dict[str, Any]], metric: str) -> float:
    values = [g[metric] for g in groups if g[metric] is not None]
    return max(values) - min(values) if len(values) > 1 else 0.0


def judge(
    settings: Settings,
    candidate: store.RegisteredModel,
    production: store.RegisteredModel | None,
    features: pd.DataFrame,
    labels: pd.Series,
) -> GateResult:
    """The gate's verdict for a candidate against production on the same holdout rows."""
    task_type = candidate.metadata["task_type"]
    metric, direction = PRIMARY_METRIC[task_type]
    margin = settings.registry.promotion_margin
    cand_score = score(candidate.pipeline, features, labels, task_type)[metric]
    groups: list[dict[str, Any]] = []
    verdict = partial(
        GateResult, candidate=candidate.tag, metric=metric, candidate_score=cand_score, margin=margin
    )
    if settings.registry.sensitive_column:
        groups = group_scores(
            candidate.pipeline, features, labels, settings.registry.sensitive_column, task_type
        )
        gap = fairness_gap(groups, metric)
        if gap > settings.registry.max_group_gap:
            reason = (
                f"{metric} differs by {gap:.4f} between groups of {settings.registry.sensitive_column!r}, "
                f"more than registry.max_group_gap {settings.registry.max_group_gap}"
            )
            return verdict(
                production=production.tag if production else None,
                production_score=None,
                passed=False,
                reason=reason,
                groups=groups,
            )
    if production is None:
        return verdict(
            production=None,
            production_score=None,
            passed=True,
            reason="no production model yet",
            groups=groups,
        )
    try:
        prod_score = score(production.pipeline, features, labels, task_type)[metric]
    except (KeyError, ValueError) as exc:  # the production model cannot read the new data's columns
        return verdict(
            production=production.tag,
            production_score=None,
            passed=True,
            reason=f"production model cannot score the current holdout ({exc}); the candidate replaces it",
            groups=groups,
        )
    gain = improvement(cand_score, prod_score, direction)
    passed = gain > margin
    verb = "beats" if passed else "does not beat"
    reason = f"{metric} {cand_score:.4f} vs {prod_score:.4f}: {verb} production by more than {margin}"
    return verdict(
        production=production.tag,
        production_score=prod_score,
        passed=passed,
        reason=reason,
        groups=groups,
    )


def promote(
    settings: Settings, candidate_tag: str, features: pd.DataFrame, labels: pd.Series, reason: str
) -> GateResult:
    """Judge the candidate against production and, when it passes, make it production, all under the lock."""
    candidate = store.load(candidate_tag)
    with aliases.locked(settings) as record:
        if record.production == candidate.tag:
            return GateResult(
                candidate=candidate.tag,
                production=candidate.tag,
                metric=PRIMARY_METRIC[candidate.metadata["task_type"]][0],
                candidate_score=float("nan"),
                production_score=None,
                margin=settings.registry.promotion_margin,
                passed=False,
                reason="already production",
            )
        production = store.load(record.production) if record.production else None
        result = judge(settings, candidate, production, features, labels)
        if result.passed:
            record.history.append(
                aliases.entry(candidate.tag, reason, metric=result.metric, score=result.candidate_score)
            )
    return result


def rollback(settings: Settings) -> tuple[str, str]:
    """Make the previous production model production again; returns (retired tag, restored tag)."""
    import bentoml

    with aliases.locked(settings) as record:
        if len(record.history) < 2:
            raise LookupError(
                f"nothing to roll back to: {len(record.history)} production model(s) recorded in "
                f"{aliases.alias_file(settings)}"
            )
        retired, restored = record.history[-1]["tag"], record.history[-2]["tag"]
        try:
            bentoml.models.get(restored)
        except bentoml.exceptions.NotFound as exc:
            raise LookupError(f"the previous production model {restored} is no longer in the store") from exc
        record.history.pop()
    return retired, restored
