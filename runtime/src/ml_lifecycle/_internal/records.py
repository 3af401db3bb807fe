"""The request record: one predicted row as the service logs it and as the monitor and training read it.

One type for the writer (serving/service.py builds it, serving/request_log.py writes it as a JSON line) and
for every reader (`read_records` parses lines into it), so a field cannot be written under one name and
read under another, and what a reader requires is what the type requires. The line format is the one
release 2.0.0 wrote (same keys, same order, `time` as ISO text with its offset), so its logs still read.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

# One encoder for every line: json.dumps with options builds a new one per call.
_LINE = json.JSONEncoder(default=str, separators=(",", ":"))


class RequestRecord(BaseModel):
    """One row the service predicted: which request (id and row), when, by which endpoint and model
    version, the features as sent, and the answer. Unknown keys in a line are ignored (a newer writer)."""

    # An id logged as a number by a hand-made log is still text: ids are compared as text (00042 is not 42).
    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    request_id: str
    time: datetime
    endpoint: str | None = None
    model_version: str | None = None
    row: int = 0
    features: dict[str, Any]
    prediction: float | int | str | None
    probabilities: dict[str, float] | None = None

    @field_validator("time", mode="before")
    @classmethod
    def _aware_iso_time(cls, value: Any) -> datetime:
        """An ISO time with its offset, parsed as the standard library does (no Unix seconds, no naive
        time: the monitor's window compares times across workers and zones)."""
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("is not an ISO time") from None
        if not isinstance(value, datetime):
            raise ValueError("is not an ISO time")
        if value.tzinfo is None:
            raise ValueError("has no time zone")
        return value

    def line(self) -> str:
        """The record as one JSON line (no newline), byte for byte as 2.0.0 wrote it; a value JSON has no
        type for is written as its text. Raises ValueError when it cannot be written (a circular value).
        The fields as they are: model_dump() would copy every value first, for nothing."""
        fields = dict(self)
        fields["time"] = self.time.isoformat()
        return _LINE.encode(fields)

    @classmethod
    def parse(cls, line: str) -> RequestRecord:
        """The record on `line`; ValueError naming why when the line is no record."""
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(_why(exc)) from None


def _why(exc: ValidationError) -> str:
    """A validation error in a few words: the keys missing ("no time, features"), or the first bad value."""
    errors = exc.errors(include_url=False)
    missing = [str(error["loc"][0]) for error in errors if error["type"] == "missing"]
    if missing:
        return f"no {', '.join(missing)}"
    error = errors[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{where} {error['input']!r} {message}"
