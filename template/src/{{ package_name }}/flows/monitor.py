"""Monitoring flow: compare a current batch with the model's training reference and report drift.

When the share of drifted columns reaches the threshold it emits `<package>.drift.detected`; the retrain
deployment's trigger in prefect.yaml listens for that event, so retraining is Prefect's decision to make
(with its cooldown and concurrency limit), not this flow's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from .. import aliases, data, monitoring, registry
from ..config import get_settings


@task(cache_policy=NO_CACHE)
def check_drift(current_path: str, model_tag: str) -> dict:
    settings = get_settings()
    model = registry.load(model_tag)
    path = settings.resolve(current_path)
    current = monitoring.prepare_current(data.read_table(path), model.schema, str(path))
    result, snapshot = monitoring.compute_drift(
        model.reference, current, model.schema, settings.monitoring.drift_threshold
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = monitoring.save_report(
        snapshot, settings.resolve(settings.monitoring.reports_dir), f"drift-{stamp}"
    )
    create_markdown_artifact(
        key="drift-report",
        markdown=monitoring.markdown_summary(result, model_tag, str(path)) + f"\n\nFull report: `{report}`",
        description="Data drift of the current batch against the training reference",
    )
    return result.as_dict() | {"report": str(report)}


@flow(name="monitor", log_prints=True)
def monitor(current_path: str | None = None) -> dict:
    """Check a batch for drift; returns the verdict, `event_emitted` says if retraining was asked for."""
    settings = get_settings()
    logger = get_run_logger()
    model_tag = aliases.production_tag(settings)  # the served model's reference is the one that matters
    verdict = check_drift(current_path or settings.monitoring.current_path, model_tag)
    verdict["event_emitted"] = False
    if verdict["drifted"]:
        event = emit_event(
            event=settings.drift_event,
            resource={
                "prefect.resource.id": f"{settings.model_name}.model.{model_tag}",
                "prefect.resource.name": model_tag,
            },
            payload={k: verdict[k] for k in ("drift_share", "drifted_columns", "threshold", "n_current")},
        )
        verdict["event_emitted"] = event is not None
        columns = verdict["drifted_columns"]
        logger.warning(
            "Drift: share %.3f (%d columns: %s); event %s emitted",
            verdict["drift_share"],
            len(columns),
            ", ".join(columns[:8]) + (", ..." if len(columns) > 8 else ""),
            settings.drift_event,
        )
    else:
        print(f"No drift: share {verdict['drift_share']:.3f} below threshold {verdict['threshold']}")
    return verdict
