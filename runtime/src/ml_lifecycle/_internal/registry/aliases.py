"""The production alias: which registered model the service serves, and the ones it served before.

Written by hand because BentoML's model store has no aliases or stages. It is one small JSON record per
model name beside the store ($BENTOML_HOME/aliases/<name>.json), changed only under an exclusive file lock
(two flows promoting at once take turns, each seeing the other's result) and replaced atomically (a crash
mid-write leaves the previous record, never half a file), so it survives restarts and is never torn.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic_write import write_atomically
from ..config import Settings


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

    @property
    def production(self) -> str | None:
        return self.history[-1]["tag"] if self.history else None


def alias_file(settings: Settings) -> Path:
    return settings.bentoml_home / "aliases" / f"{settings.model_name}.json"


class AliasRecordError(RuntimeError):
    """The alias record exists but cannot be used: not JSON, or without the fields every record has."""


def read(settings: Settings) -> AliasRecord:
    path = alias_file(settings)
    if not path.exists():
        return AliasRecord()
    try:
        content = json.loads(path.read_text())
    except ValueError as exc:
        raise AliasRecordError(
            f"{path}: the production alias record is not JSON ({exc}); restore it or delete it"
        ) from exc
    missing = _missing_field(content)
    if missing:
        raise AliasRecordError(f"{path}: the production alias record has {missing}; restore it or delete it")
    return AliasRecord(history=content["history"], rolled_back=content.get("rolled_back", []))


def _missing_field(content: Any) -> str | None:
    """What a record lacks: its history list, or a tag in an entry of history or rolled_back."""
    if not isinstance(content, dict) or not isinstance(content.get("history"), list):
        return "no history list"
    rolled_back = content.get("rolled_back", [])
    if not isinstance(rolled_back, list):
        return "a rolled_back that is not a list"
    for key, entries in (("history", content["history"]), ("rolled_back", rolled_back)):
        for number, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or not isinstance(entry.get("tag"), str) or not entry["tag"]:
                return f"no tag in {key} entry {number}"
    return None


@contextlib.contextmanager
def locked(settings: Settings) -> Iterator[AliasRecord]:
    """Read-modify-write under an exclusive lock; the record as the block leaves it is written atomically."""
    path = alias_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            record = read(settings)
            before = json.dumps(record.as_json())
            yield record
            if json.dumps(record.as_json()) != before:
                content = json.dumps(record.as_json(), indent=2).encode()
                write_atomically(path, lambda sink: sink.write(content))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def entry(tag: str, reason: str, **details: Any) -> dict[str, Any]:
    return {"tag": tag, "since": datetime.now(UTC).isoformat(), "reason": reason, **details}


def production_tag(settings: Settings) -> str:
    """The model the service must serve; a clear error when none has been promoted yet."""
    tag = read(settings).production
    if tag is None:
        raise LookupError(
            f"no production model for {settings.model_name!r} (record {alias_file(settings)}); "
            f"run `python -m {settings.project.package} train`, which promotes a model that passes the gate"
        )
    return tag
