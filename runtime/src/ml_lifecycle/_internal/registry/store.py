"""The BentoML model store as the project's model registry.

A model is saved only after it has been fitted and scored, together with everything the other stages need
to agree with training: the feature schema (the service's request schema), a sample of the training rows
(the monitor's drift reference), the metrics, the best parameters and where the model came from.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

import bentoml
import pandas as pd

from ..config import Settings


@dataclass(frozen=True)
class RegisteredModel:
    tag: str
    pipeline: Any
    metadata: dict[str, Any]
    schema: dict[str, dict[str, Any]]
    reference: pd.DataFrame


def git_commit(settings: Settings) -> str | None:
    """The project's commit, when the project is a git repository; so a model can be traced to code."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=settings.root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def save(
    settings: Settings,
    pipeline: Any,
    *,
    schema: dict[str, dict[str, Any]],
    reference: pd.DataFrame,
    metrics: dict[str, float],
    params: dict[str, Any],
    data_hash: str,
    extra: dict[str, Any] | None = None,
) -> str:
    metadata = {
        "task_type": settings.data.task_type,
        "model_family": settings.tuning.model_family,
        "target_column": settings.data.target_column,
        "metrics": metrics,
        "best_params": params,
        "data_hash": data_hash,
        "template_version": settings.project.template_version,
        "git_commit": git_commit(settings) or "none",  # metadata values cannot be None
        "seed": settings.data.seed,
        # In metadata (plain YAML beside the model) so the service reads it without unpickling anything.
        "feature_schema": schema,
        **(extra or {}),
    }
    model = bentoml.sklearn.save_model(
        settings.model_name,
        pipeline,
        metadata=metadata,
        labels={"task": settings.data.task_type, "family": settings.tuning.model_family},
        custom_objects={"reference": reference},
    )
    return str(model.tag)


def latest_tag(settings: Settings) -> str:
    """The newest registered model; a clear error when nothing has been trained yet."""
    try:
        return str(bentoml.models.get(f"{settings.model_name}:latest").tag)
    except bentoml.exceptions.NotFound as exc:
        raise LookupError(
            f"no model named {settings.model_name!r} in the store at {settings.bentoml_home}; "
            f"run `python -m {settings.project.package} train` first"
        ) from exc


def load(tag: str) -> RegisteredModel:
    model = bentoml.models.get(tag)
    metadata: dict[str, Any] = dict(model.info.metadata)  # what save() wrote: JSON values
    return RegisteredModel(
        tag=str(model.tag),
        pipeline=bentoml.sklearn.load_model(model),
        metadata=metadata,
        schema=metadata["feature_schema"],
        reference=model.custom_objects["reference"],
    )


def event_resource(settings: Settings, version: str) -> dict[str, str]:
    """The Prefect event resource of one model version: its id, and the environment each environment's
    retrain trigger matches on (prefect.yaml), so environments can share one Prefect server."""
    return {
        "prefect.resource.id": f"{settings.model_name}.model.{version}",
        "prefect.resource.name": version,
        "environment": settings.project.environment,
    }
