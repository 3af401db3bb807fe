"""The production alias: which registered model the service serves, and the ones it served before.

Written by hand because BentoML's model store has no aliases or stages. It is one small JSON object per
model name in the project's store (`aliases/<name>.json` under storage.url), changed only by
compare-and-swap (Storage.update: read its version, write only if it is still that version, else read again
and redo the change), so promote and rollback from two machines at once never lose an update, and an object
store never holds half a record. A change is a function of the record as it is now, run again on conflict.

A 2.0 project kept the record beside its BentoML store ($BENTOML_HOME/aliases/<name>.json); the first read
that finds none in the store takes that file over (create-only, so once), with the models its history names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..config import Settings
from ..storage import ALIASES, open_storage

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AliasRecord:
    """`history` is oldest first; its last entry is production. `rolled_back` lists the models taken out of
    production by a rollback (tag, since, reason), which the gate never promotes again on its own."""

    history: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: list[dict[str, Any]] = field(default_factory=list)

    def was_rolled_back(self, tag: str) -> dict[str, Any] | None:
        """The rollback entry of `tag`, or None when it was never rolled back."""
        return next((e for e in reversed(self.rolled_back) if e["tag"] == tag), None)

    def as_json(self) -> dict[str, Any]:
        return {"history": self.history, "rolled_back": self.rolled_back}

    def encoded(self) -> bytes:
        return json.dumps(self.as_json(), indent=2).encode()

    @property
    def production(self) -> str | None:
        return self.history[-1]["tag"] if self.history else None


def key(settings: Settings) -> str:
    """The record's key in the store."""
    return f"{ALIASES}/{settings.model_name}.json"


def where(settings: Settings) -> str:
    """The record's full URL, for messages."""
    return open_storage(settings).url_of(key(settings))


def legacy_file(settings: Settings) -> Path:
    """Where a 2.0 project kept the record: beside its BentoML store."""
    return settings.bentoml_home / "aliases" / f"{settings.model_name}.json"


class AliasRecordError(RuntimeError):
    """The alias record exists but cannot be used: not JSON, or without the fields every record has."""


def parse(content: bytes | str, source: str) -> AliasRecord:
    """A record from its JSON; AliasRecordError naming `source` when it is not one."""
    try:
        loaded = json.loads(content)
    except ValueError as exc:
        raise AliasRecordError(
            f"{source}: the production alias record is not JSON ({exc}); restore it or delete it"
        ) from exc
    missing = _missing_field(loaded)
    if missing:
        raise AliasRecordError(
            f"{source}: the production alias record has {missing}; restore it or delete it"
        )
    return AliasRecord(history=loaded["history"], rolled_back=loaded.get("rolled_back", []))


def read(settings: Settings) -> AliasRecord:
    """The record as it is in the store (an empty one when nothing has been promoted yet)."""
    storage = open_storage(settings)
    data = storage.read_bytes(key(settings))
    if data is None and take_over(settings):
        data = storage.read_bytes(key(settings))
    return parse(data, storage.url_of(key(settings))) if data is not None else AliasRecord()


def change(settings: Settings, edit: Callable[[AliasRecord], T]) -> T:
    """Apply `edit` (it changes the record in place and returns what the caller wants back) by
    compare-and-swap: when another writer changed the record since it was read, `edit` runs again on the
    record as that writer left it. An exception from `edit` leaves the record as it is."""
    storage = open_storage(settings)
    source = storage.url_of(key(settings))
    take_over(settings)
    outcome: list[T] = []

    def apply(data: bytes | None) -> bytes | None:
        record = parse(data, source) if data is not None else AliasRecord()
        before = json.dumps(record.as_json())
        outcome[:] = [edit(record)]
        return None if json.dumps(record.as_json()) == before else record.encoded()

    storage.update(key(settings), apply)
    return outcome[0]


def take_over(settings: Settings) -> bool:
    """A 2.0 record ($BENTOML_HOME/aliases/<name>.json) into the store when the store has none, create-only
    (so once, whoever races), with the models its history names that this machine has (exported as save()
    does, so the other machines can load them). True when this call took it over."""
    storage = open_storage(settings)
    legacy = legacy_file(settings)
    if not legacy.exists() or storage.read(key(settings)) is not None:
        return False
    record = parse(legacy.read_bytes(), str(legacy))
    from . import store  # store imports this module's neighbours; imported here to keep the layers apart

    for entry in [*record.history, *record.rolled_back]:
        store.publish_if_local(settings, entry["tag"])
    if not storage.create(key(settings), record.encoded()):
        return False  # another process took it over first
    LOGGER.warning(
        "Took over the production alias record %s into the store at %s (production: %s); the file is no "
        "longer read",
        legacy,
        storage.url_of(key(settings)),
        record.production,
    )
    return True


def _missing_field(content: Any) -> str | None:
    """What a record lacks: its history list, or a tag in an entry of history or rolled_back."""
    if not isinstance(content, dict) or not isinstance(content.get("history"), list):
        return "no history list"
    rolled_back = content.get("rolled_back", [])
    if not isinstance(rolled_back, list):
        return "a rolled_back that is not a list"
    for name, entries in (("history", content["history"]), ("rolled_back", rolled_back)):
        for number, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or not isinstance(entry.get("tag"), str) or not entry["tag"]:
                return f"no tag in {name} entry {number}"
    return None


def entry(tag: str, reason: str, **details: Any) -> dict[str, Any]:
    return {"tag": tag, "since": datetime.now(UTC).isoformat(), "reason": reason, **details}


def production_tag(settings: Settings) -> str:
    """The model the service must serve; a clear error when none has been promoted yet."""
    tag = read(settings).production
    if tag is None:
        raise LookupError(
            f"no production model for {settings.model_name!r} (record {where(settings)}); "
            f"run `python -m {settings.project.package} train`, which promotes a model that passes the gate"
        )
    return tag
