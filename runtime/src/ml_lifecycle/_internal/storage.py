"""The project's shared state under one storage URL (`storage.url`): models, the production alias and its
history, the request log, labels and monitoring reports.

A local folder by default (`.state/store` in the project), so one machine needs no new service; for a team,
object storage: `s3://bucket/prefix` (AWS S3 or any S3-compatible endpoint: MinIO, Ceph; endpoint and
credentials from the standard `AWS_*` variables), `gs://` or `az://`. obstore is the one client for every
backend: it speaks S3, GCS and Azure natively, including conditional writes (create-only, and If-Match
against an ETag), which fsspec does not abstract.

Written by hand, because no client does it: compare-and-swap on a local folder (obstore's LocalStore
implements create-only writes but not If-Match), done under an exclusive lock beside the object.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import obstore
from obstore.store import LocalStore, ObjectStore, from_url

if TYPE_CHECKING:
    from .config import Settings

# The layout under the URL: one folder per kind of state, the same on every backend.
MODELS = "models"
ALIASES = "aliases"
REQUESTS = "requests"
LABELS = "labels"
REPORTS = "reports"
# What storage.url may start with: a folder (file://) or one of the object stores obstore reaches.
STORAGE_SCHEMES = ("file", "s3", "s3a", "gs", "az", "abfs", "abfss", "azure")


class StorageError(RuntimeError):
    """The store cannot be used (unreachable, refused, no bucket, an object that is not ours): one line that
    names storage.url and the fix."""


@dataclass(frozen=True)
class Stored:
    """An object as read, with the version a compare-and-swap must match (the backend's ETag)."""

    data: bytes
    version: str


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: datetime


class Storage:
    """The store behind storage.url; keys are relative to its prefix and use `/` on every backend."""

    def __init__(self, url: str, timeout_seconds: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.scheme = urlparse(self.url).scheme
        self.local_root = Path(urlparse(self.url).path) if self.scheme == "file" else None
        self._store = _open(self.url, timeout_seconds)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    @property
    def is_local(self) -> bool:
        """A folder on this machine: shared only with processes that see the same disk."""
        return self.local_root is not None

    def url_of(self, key: str) -> str:
        return f"{self.url}/{key}"

    def read(self, key: str) -> Stored | None:
        """The object and its version, or None when there is none."""
        try:
            with self._errors(key):
                result = obstore.get(self._store, key)
                return Stored(bytes(result.bytes()), str(result.meta["e_tag"]))
        except FileNotFoundError:
            return None

    def read_bytes(self, key: str) -> bytes | None:
        stored = self.read(key)
        return stored.data if stored else None

    def write(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write or replace; readers see the old object or the new one, never part of one. `content_type`
        is what a signed link serves the object as (a browser shows text/html instead of downloading it)."""
        with self._errors(key):
            obstore.put(self._store, key, data, attributes=self._attributes(content_type))

    def create(self, key: str, data: bytes, content_type: str | None = None) -> bool:
        """Write only when nothing is there yet (If-None-Match); False when an object already is."""
        with self._errors(key):
            try:
                obstore.put(self._store, key, data, mode="create", attributes=self._attributes(content_type))
            except FileExistsError:
                return False
            except obstore.exceptions.AlreadyExistsError:
                return False
        return True

    def swap(self, key: str, data: bytes, version: str | None) -> bool:
        """Compare-and-swap: write `data` only when the object is still at `version` (None: still absent).
        False when another writer got there first; the caller reads again and retries."""
        if version is None:
            return self.create(key, data)
        if self.local_root is not None:
            return self._swap_local(key, data, version)
        with self._errors(key):
            try:
                obstore.put(self._store, key, data, mode={"e_tag": version})
            except (obstore.exceptions.PreconditionError, FileNotFoundError):
                return False
        return True

    def update(self, key: str, change: Callable[[bytes | None], bytes | None], attempts: int = 50) -> bool:
        """Read-modify-write by compare-and-swap, retried on conflict: `change` gets the current content
        (None when absent) and returns the new one, or None to leave the object as it is. True when
        written."""
        for _ in range(attempts):
            stored = self.read(key)
            new = change(stored.data if stored else None)
            if new is None:
                return False
            if self.swap(key, new, stored.version if stored else None):
                return True
        raise StorageError(
            f"{self.url_of(key)}: still changed by other writers after {attempts} attempts; try again"
        )

    def list(self, prefix: str) -> list[Listed]:
        """Every object under `prefix` (a folder), in key order."""
        with self._errors(prefix):
            pages = obstore.list(self._store, prefix=prefix.rstrip("/") + "/").collect()
        return sorted(
            (Listed(str(m["path"]), int(m["size"]), m["last_modified"]) for m in pages),
            key=lambda listed: listed.key,
        )

    def folders(self, prefix: str) -> list[str]:
        """The folders directly under `prefix` (their keys), in key order: one listing call, however many
        objects they hold (the request log's date and hour partitions)."""
        with self._errors(prefix):
            found = obstore.list_with_delimiter(self._store, prefix=prefix.rstrip("/") + "/")
        return sorted(str(folder).rstrip("/") for folder in found["common_prefixes"])

    def delete(self, key: str) -> None:
        with self._errors(key), contextlib.suppress(FileNotFoundError):
            obstore.delete(self._store, key)

    def upload(self, key: str, source: Path, *, create_only: bool = False) -> bool:
        """A local file into the store; with create_only, False when the key already exists."""
        data = source.read_bytes()
        if create_only:
            return self.create(key, data)
        self.write(key, data)
        return True

    def download(self, key: str, target: Path) -> bool:
        """The object into a local file (written whole, then renamed); False when there is none."""
        data = self.read_bytes(key)
        if data is None:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(target)
        return True

    def link(self, key: str, expires: timedelta = timedelta(days=7)) -> str:
        """A URL a browser opens: a signed one on object storage, a file:// one on a local folder."""
        if self.local_root is not None:
            return (self.local_root / key).as_uri()
        with self._errors(key):
            return str(obstore.sign(self._store, "GET", key, expires))  # type: ignore[arg-type]

    def _attributes(self, content_type: str | None) -> dict[str, str] | None:
        # A folder has no object metadata (obstore's LocalStore refuses attributes); a file:// link opens by
        # the file's extension instead.
        if content_type is None or self.local_root is not None:
            return None
        return {"Content-Type": content_type}

    def _swap_local(self, key: str, data: bytes, version: str) -> bool:
        assert self.local_root is not None
        lock_path = self.local_root / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.read(key)
                if current is None or current.version != version:
                    return False
                self.write(key, data)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """obstore's errors as one line naming the setting; 'not found' and conflicts pass through."""
        try:
            yield
        except FileNotFoundError as exc:
            # A missing bucket answers 404 like a missing object: it must not read as "nothing stored yet".
            if "nosuchbucket" in str(exc).lower():
                raise StorageError(_explain(self.url, key, exc)) from exc
            raise
        except (
            FileExistsError,
            obstore.exceptions.AlreadyExistsError,
            obstore.exceptions.PreconditionError,
        ):
            raise
        except obstore.exceptions.BaseError as exc:
            raise StorageError(_explain(self.url, key, exc)) from exc
        except OSError as exc:
            raise StorageError(f"storage.url = {self.url!r}: {key}: {exc}") from exc


def _explain(url: str, key: str, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    lowered = str(exc).lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        hint = "the bucket does not exist: create it, or fix storage.url"
    # 403 as a status, not as digits of the request's elapsed time ("in 278.425403ms") in a connect error.
    elif re.search(r"\b403\b", lowered) or any(
        word in lowered for word in ("accessdenied", "invalidaccesskeyid", "signature")
    ):
        hint = (
            "access refused: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the "
            "workload's identity)"
        )
    elif any(word in lowered for word in ("connect", "dns", "timed out", "timeout")):
        hint = "the endpoint does not answer: check AWS_ENDPOINT_URL (or the network)"
    else:
        hint = "check storage.url and the credentials"
    return f"storage.url = {url!r} ({key}): {hint} [{text}]"


def _open(url: str, timeout_seconds: float) -> ObjectStore:
    scheme = urlparse(url).scheme
    if scheme not in STORAGE_SCHEMES:
        raise StorageError(
            f"storage.url = {url!r}: not a folder or a store URL; use a path, file://, s3://bucket/prefix, "
            "gs://bucket/prefix or az://container/prefix"
        )
    if scheme == "file":
        root = Path(urlparse(url).path)
        root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root)
    client: dict[str, Any] = {
        "timeout": f"{timeout_seconds:g}s",
        "connect_timeout": f"{min(timeout_seconds, 10):g}s",
    }
    config: dict[str, Any] = {}
    if scheme in ("s3", "s3a"):
        # The variable boto3 and the AWS CLI read for S3 alone wins over the general one, as there.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            config["endpoint"] = endpoint
            client["allow_http"] = endpoint.startswith("http://")
        if not os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
            config["region"] = "us-east-1"
    retry = {
        "max_retries": 2,
        "backoff": {"init_backoff": timedelta(milliseconds=100)},
        "retry_timeout": timedelta(seconds=timeout_seconds),
    }
    try:
        return from_url(url, config=config or None, client_options=client, retry_config=retry)  # type: ignore[arg-type]
    except obstore.exceptions.BaseError as exc:
        raise StorageError(_explain(url, "", exc)) from exc


def storage_url(settings: Settings) -> str:
    """storage.url as a URL: a path (relative to the project root) becomes file://."""
    url = settings.storage.url
    if "://" in url:
        return url
    return settings.resolve(url).resolve().as_uri()


@lru_cache(maxsize=8)
def _cached(url: str, timeout_seconds: float, environment: tuple[str, ...]) -> Storage:
    return Storage(url, timeout_seconds)


def open_storage(settings: Settings) -> Storage:
    """The project's store; one client per URL and endpoint in a process."""
    environment = tuple(os.environ.get(v, "") for v in _CLIENT_VARIABLES)
    return _cached(storage_url(settings), settings.storage.timeout_seconds, environment)


# A client is made again when one of these changes (a test or a process switching credentials).
_CLIENT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_REGION")
