"""Checks `prefect deploy` runs first, as build steps of prefect.yaml: deploy time is where a setting that
cannot work on the chosen work pool is refused, before any run is scheduled on it.

Only the settings are read here (no Prefect, BentoML or Evidently import): the step runs once per deployment.
"""

from __future__ import annotations

from urllib.parse import urlparse

from ..config import ENV_PREFIX, get_settings
from ..storage import storage_url

# Pools whose runs each start in a container of their own: a folder is not shared between them.
CONTAINER_POOLS = ("docker", "kubernetes")


class LocalStorageOnContainerPool(SystemExit):
    """storage.url names a folder, and the runs of a container pool would each write their own copy.

    A SystemExit, so `prefect deploy` stops with this one line and status 1: Prefect's CLI prints any other
    exception of a step as two chained tracebacks, with the line somewhere inside."""


def require_shared_storage(pool_type: str, storage_url_override: str | None = None) -> dict[str, str]:
    """Refuse to deploy to a docker or kubernetes pool while storage.url is a folder: each run's container
    (and each service replica) would keep its models, alias, request log and reports on a disk of its own,
    and the loop would never close. `storage_url_override` is the URL the runs get when prefect.yaml knows
    it (a Secret block), else the project's storage.url as this process resolves it (settings.toml, then
    <PACKAGE>_STORAGE__URL). Returns {"storage_url": ...} for later steps."""
    settings = get_settings()
    url = storage_url_override or storage_url(settings)
    if pool_type in CONTAINER_POOLS and urlparse(url if "://" in url else f"file://{url}").scheme == "file":
        raise LocalStorageOnContainerPool(
            f"storage.url = {url!r} is a folder, but runs on a {pool_type} pool each have a disk of their "
            f"own: set storage.url (settings.toml [storage], or {ENV_PREFIX}STORAGE__URL) to "
            "s3://bucket/prefix, gs://bucket/prefix or az://container/prefix (runtime/docs/scaling.md)"
        )
    return {"storage_url": url}
