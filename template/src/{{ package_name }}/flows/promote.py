"""Promotion and rollback flows: the gate's verdict and the production pointer, visible in the Prefect UI."""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ..config import get_settings
from ..registry import promotion, store
from ..training import holdout, validation


@task(cache_policy=NO_CACHE)
def gate(
    candidate_tag: str,
    features: pd.DataFrame,
    labels: pd.Series,
    reason: str,
    accept_schema_change: bool = False,
    allow_rolled_back: bool = False,
) -> dict:
    """Judge and maybe promote; the verdict (and the per-group table) become artifacts."""
    result = promotion.promote(
        get_settings(),
        candidate_tag,
        features,
        labels,
        reason,
        accept_schema_change=accept_schema_change,
        allow_rolled_back=allow_rolled_back,
    )
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
    return result.as_dict()


def holdout_rows() -> tuple[pd.DataFrame, pd.Series]:
    """The current data's holdout rows: the same split (seed) the train flow scores on."""
    settings = get_settings()
    parts = holdout.split(validation.load_dataset(settings), settings)
    return parts.test_x, parts.test_y


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
    features, labels = holdout_rows()
    result = gate(
        tag or store.latest_tag(settings), features, labels, reason, accept_schema_change, allow_rolled_back
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
