"""The BentoML model store as the project's model registry, shared through the project's store.

A model is saved only after it has been fitted and scored, together with everything the other stages need
to agree with training: the feature schema (the service's request schema), a sample of the training rows
(the monitor's drift reference), the metrics, the best parameters and where the model came from.

Saving also exports the model to the store (`models/<name>/<version>.bentomodel` under storage.url) once,
create-only, so it is never overwritten. Each process's BentoML store is a cache: a model asked for by tag
that it lacks (trained on another machine) is imported from the store the first time it is needed
(`ensure_local`), under a lock beside that BentoML store so the workers sharing it import it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import pandas as pd

from ..config import Settings, get_settings
from ..storage import MODELS, StorageError, open_storage

LOGGER = logging.getLogger(__name__)
EXTENSION = ".bentomodel"


class ModelNotFound(bentoml.exceptions.NotFound, LookupError):
    """A tag neither this process's BentoML store nor the project's store has."""


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
    publish(settings, str(model.tag))
    return str(model.tag)


def model_key(tag: str) -> str:
    """A model's key in the store: models/<name>/<version>.bentomodel."""
    name, _, version = tag.partition(":")
    return f"{MODELS}/{name}/{version}{EXTENSION}"


def publish(settings: Settings, tag: str) -> bool:
    """Export a model of this process's BentoML store to the project's store, create-only: True when this
    call wrote it, False when it was there already (a second export is a no-op, never an overwrite)."""
    storage = open_storage(settings)
    key = model_key(tag)
    with tempfile.TemporaryDirectory(prefix="bentomodel-") as folder:
        archive = Path(folder) / f"model{EXTENSION}"
        bentoml.models.export_model(tag, str(archive))
        created = storage.upload(key, archive, create_only=True)
    if created:
        LOGGER.info("Exported %s to %s", tag, storage.url_of(key))
    return created


def publish_if_local(settings: Settings, tag: str) -> None:
    """Export a model this machine has (a 2.0 project's, saved before the store existed); nothing when it
    has not."""
    with contextlib.suppress(bentoml.exceptions.NotFound):
        bentoml.models.get(tag)
        publish(settings, tag)


def stored_versions(settings: Settings, name: str) -> list[tuple[str, Any]]:
    """(tag, modified) of every model of `name` in the store, oldest first; objects under models/<name>/
    that are not model archives are not models and are left out."""
    listed = open_storage(settings).list(f"{MODELS}/{name}")
    found = [
        (f"{name}:{item.key.rsplit('/', 1)[1].removesuffix(EXTENSION)}", item.modified)
        for item in listed
        if item.key.endswith(EXTENSION) and item.key.count("/") == 2
    ]
    return sorted(found, key=lambda pair: (pair[1], pair[0]))


def ensure_local(settings: Settings, tag: str) -> str:
    """The model `tag` names, in this process's BentoML store: imported from the project's store the first
    time it is needed. `name` or `name:latest` is the newest model (latest_tag). Returns the full tag;
    ModelNotFound when neither store has it, StorageError naming the key when the object is not a model."""
    name, _, version = tag.partition(":")
    if version in ("", "latest"):
        tag = latest_tag(settings, name)
    with _import_lock(settings, tag, fcntl.LOCK_SH), contextlib.suppress(bentoml.exceptions.NotFound):
        return str(bentoml.models.get(tag).tag)
    with _import_lock(settings, tag, fcntl.LOCK_EX):
        with contextlib.suppress(bentoml.exceptions.NotFound):
            return str(bentoml.models.get(tag).tag)  # another worker imported it while this one waited
        _import(settings, tag)
    return tag


def _import(settings: Settings, tag: str) -> None:
    storage = open_storage(settings)
    key = model_key(tag)
    with tempfile.TemporaryDirectory(prefix="bentomodel-") as folder:
        archive = Path(folder) / f"model{EXTENSION}"
        if not storage.download(key, archive):
            raise ModelNotFound(
                f"model {tag} is neither in this process's model store ({settings.bentoml_home}) nor in "
                f"storage.url = {storage.url!r} ({key}); train it, or check storage.url"
            )
        try:
            # Read before it is saved: an archive holding another model must not enter the store.
            model = bentoml.models.Model.import_from(str(archive))
        except Exception as exc:  # whatever a foreign object makes tar, lzma or BentoML raise: one line
            raise StorageError(
                f"{storage.url_of(key)} is not a BentoML model archive ({_line(exc)}); delete it, or export "
                "the model again from a machine that has it"
            ) from exc
        if str(model.tag) != tag:
            raise StorageError(
                f"{storage.url_of(key)} holds model {model.tag}, not {tag}; delete it, or export {tag} again "
                "from a machine that has it"
            )
        model.save()
    LOGGER.info("Imported %s from %s", tag, storage.url_of(key))


def _created(tag: str) -> str:
    try:
        return bentoml.models.get(tag).info.creation_time.isoformat()
    except bentoml.exceptions.NotFound:
        return ""


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _import_lock(settings: Settings, tag: str, mode: int) -> Iterator[None]:
    """The processes sharing a BentoML store (a service's workers) import a model once: BentoML's own
    import is not safe against two at once (both copy into the same folder)."""
    folder = settings.bentoml_home / "locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"import-{tag.replace(':', '-')}.lock", "a")  # noqa: SIM115 - closed below
    except OSError:  # a read-only store (a Bento's image): nothing can be imported into it, nothing to order
        yield
        return
    with lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def latest_tag(settings: Settings, name: str | None = None) -> str:
    """The newest registered model (of `name`, by default the project's): the newest in the project's store,
    where every machine's models are; this process's own store when that has none (a 2.0 project's models).
    A clear error when nothing has been trained yet."""
    name = name or settings.model_name
    stored = stored_versions(settings, name)
    if stored:
        newest = [tag for tag, modified in stored if modified == stored[-1][1]]
        # A store's times may be whole seconds: models written in the same second are told apart by their
        # creation time where this process has them.
        return max(newest, key=lambda tag: (_created(tag), tag))
    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except bentoml.exceptions.NotFound as exc:
        raise ModelNotFound(
            f"no model named {name!r} in storage.url = {open_storage(settings).url!r} nor in the model "
            f"store at {settings.bentoml_home}; run `python -m {settings.project.package} train` first"
        ) from exc


def load(tag: str, settings: Settings | None = None) -> RegisteredModel:
    """A registered model by tag, imported from the project's store first when this process lacks it."""
    model = bentoml.models.get(ensure_local(settings or get_settings(), tag))
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
