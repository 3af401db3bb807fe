"""Promotion and rollback flows: the gate's verdict and the production pointer, visible in the Prefect UI.

A promotion emits `<package>.model.promoted` (the running service does not need it: it follows the alias
record itself; it is there for the Prefect UI, automations and anyone else who wants to know)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from ..config import get_settings
from ..registry import card, promotion, store
from ..storage import StorageError
from ..training import feedback, holdout, validation


@task(cache_policy=NO_CACHE)
def gate(
    candidate_tag: str,
    features: pd.DataFrame,
    labels: pd.Series,
    reason: str,
    **decisions: Any,
) -> dict:
    """Judge and maybe promote; the verdict (and the per-group table) become artifacts. `decisions` are
    promotion.promote's keywords (accept_schema_change, allow_rolled_back, recent), passed on as given."""
    settings = get_settings()
    result = promotion.promote(settings, candidate_tag, features, labels, reason, **decisions)
    try:
        card.record_verdict(settings, result.candidate, result.as_dict())  # the model card keeps each verdict
    except StorageError as exc:  # the verdict stands (it may have promoted) whether or not the card says so
        get_run_logger().warning("Could not add the gate's verdict to %s's card: %s", result.candidate, exc)
    verdict = "PROMOTED" if result.passed else "NOT PROMOTED"
    production = f"{result.production_score:.4f}" if result.production_score is not None else "n/a"
    lines = [
        f"# {verdict}: `{result.candidate}`",
        "",
        f"{result.reason}.",
        "",
        f"| model | {result.metric} |",
        "|---|---|",
        f"| candidate `{result.candidate}` | {result.candidate_score:.4f} |",
        f"| production `{result.production}` | {production} |",
    ]
    if result.slices:
        lines += [
            "",
            f"| slice | rows | candidate {result.metric} | production {result.metric} | gain | "
            f"{settings.registry.gate_confidence:.0%} interval | decides |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['slice']} | {s['rows']} | {s['candidate']:.4f} | {s['production']:.4f} | "
            f"{s['gain']:+.4f} | {s['gain_low']:+.4f} to {s['gain_high']:+.4f} | "
            f"{'yes' if s['decides'] else 'no'} |"
            for s in result.slices
        ]
    if result.schema_changes:
        decision = (
            "accepted explicitly (`--accept-schema-change`)"
            if result.schema_change_accepted
            else "not accepted: the gate does not promote a schema change on its own"
        )
        lines += ["", f"## Schema change: {decision}", ""]
        lines += [f"- {change}" for change in result.schema_changes]
    create_markdown_artifact(
        key="promotion-gate",
        markdown="\n".join(lines),
        description="The quality gate between the new model and production",
    )
    if result.groups:
        create_table_artifact(
            key="promotion-groups", table=result.groups, description="Primary metric per sensitive group"
        )
    if result.passed:
        resource = store.event_resource(settings, result.candidate)
        announce_promotion(settings.promoted_event, resource, result, reason)
    return result.as_dict()


def announce_promotion(
    event: str, resource: dict[str, str], result: promotion.GateResult, reason: str
) -> None:
    """Best effort: the promotion has happened whether or not the event reaches the server."""
    try:
        emit_event(
            event=event,
            resource=resource,
            payload={"previous": result.production, "reason": reason, "gate": result.reason},
        )
    except Exception as exc:  # an events connection that fails must not fail a promotion that happened
        get_run_logger().warning("Could not emit %s for %s: %s", event, result.candidate, exc)


Rows = tuple[pd.DataFrame, pd.Series]


def gate_rows() -> tuple[Rows, Rows]:
    """The rows the train flow's gate judges on: the current data's holdout (same split, same seed) and the
    recent slice of labelled traffic."""
    settings = get_settings()
    dataset = validation.load_dataset(settings)
    parts = holdout.split(dataset, settings)
    recent = feedback.load(settings, dataset.frame, dataset.target).recent
    return (parts.test_x, parts.test_y), (recent.drop(columns=[dataset.target]), recent[dataset.target])


@flow(name="promote", log_prints=True)
def promote_model(
    tag: str | None = None,
    reason: str = "manual",
    accept_schema_change: bool = False,
    allow_rolled_back: bool = False,
) -> dict:
    """Put a registered model (the newest by default) through the gate against production.

    `accept_schema_change`: the explicit decision a model with other feature columns than production needs;
    `allow_rolled_back`: the one a model taken out of production by a rollback needs."""
    settings = get_settings()
    (features, labels), recent = gate_rows()
    result = gate(
        tag or store.latest_tag(settings),
        features,
        labels,
        reason,
        accept_schema_change=accept_schema_change,
        allow_rolled_back=allow_rolled_back,
        recent=recent,
    )
    print(f"{'Promoted' if result['passed'] else 'Not promoted'} {result['candidate']}: {result['reason']}")
    return result


@flow(name="rollback", log_prints=True)
def rollback_model(reason: str = "manual") -> str:
    """Make the previous production model production again; returns the restored tag."""
    retired, restored = promotion.rollback(get_settings(), reason)
    get_run_logger().warning("Rolled back: %s retired, %s is production again", retired, restored)
    create_markdown_artifact(
        key="rollback", markdown=f"# Rollback\n\n`{retired}` retired; `{restored}` is production again."
    )
    return restored
