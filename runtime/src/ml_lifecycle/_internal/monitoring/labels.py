"""Labels as they come back from your system: tables of `request_id`, `row` (optional, 0 when absent) and
the target column, read so that no label can stop the monitor or a retrain.

They come from two places, read together: the file at `monitoring.labels_path` (CSV or Parquet, which your
system appends to or replaces), and objects under `labels/` in the project's store (storage.url; CSV,
Parquet or JSON lines, one object per batch, which any machine can write without sharing a disk). Sources
are taken oldest first by their modification time (to the second, as object stores keep it; within one
second the file, then the objects by name), so across them as within one the last written label of a
request row wins. A source that cannot be used at all (a foreign object, a table without the columns)
is named in the report and the others are still used.

A label that cannot be used is skipped and counted by its cause in a `LabelReadReport`: the monitor's
`drift-report` artifact shows the counts and the training run logs them in one line. A later usable label
for the same request row replaces the earlier ones (the last written wins; the replaced are counted).

`join` pairs labels with the request log's rows; it is the one join, used by the monitor's performance,
the watch after rollout and training's feedback, so all three learn from and judge on the same rows.

Everything is read as text, so a request id such as `00042` stays `00042` (a number-guessing reader made it
42.0, which matched nothing); only `row` and, for regression, the target are turned into numbers. A writer
may be appending while this reads: a CSV's last line without its newline is still being written, so it is
left for the next read, neither an error nor a skipped label.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..storage import LABELS, Storage, open_storage
from ..tables import DataError, normalize_column, normalize_columns

if TYPE_CHECKING:
    from ..config import Settings
    from .served_traffic import Window

# Why a label was skipped; the texts are the keys of LabelReadReport.skipped and what the counts are shown as.
EXTRA_FIELDS = "a line with more fields than the header"
NOT_AN_OBJECT = "a JSON line that is no object"
NO_REQUEST_ID = "no request id"
ROW_BLANK = "row is blank"
ROW_NOT_INTEGER = "row is not a whole number"
ROW_OUT_OF_RANGE = "row is negative or too large"
NO_TARGET = "no target value"
NOT_A_NUMBER = "target is not a number"
SUPERSEDED = "superseded by a later label for the same request row"
NOT_SERVED = "request not in the request log's window"

ROW_MAX = 2**63 - 1  # rows are int64 in the request log


@dataclass(frozen=True)
class LabelReadReport:
    """What reading the labels found besides the usable labels: the label rows read, how many were skipped
    per cause, whether a last line was left for the next read, and a problem with the whole file."""

    path: str
    read: int = 0
    skipped: Mapping[str, int] = field(default_factory=dict)
    pending_line: bool = False
    problem: str | None = None
    # Sources that could not be used at all, each with why, while others could.
    unusable: tuple[str, ...] = ()

    def skip(self, cause: str, count: int) -> LabelReadReport:
        """This report with `count` more labels skipped for `cause`."""
        if not count:
            return self
        return replace(self, skipped={**self.skipped, cause: self.skipped.get(cause, 0) + int(count)})

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def warnings(self) -> list[str]:
        """The summary, when a label was unusable or the file was; labels for requests outside the window
        are expected (the file keeps every label ever written) and need no warning."""
        skipped = any(cause != NOT_SERVED for cause in self.skipped)
        return [self.summary()] if self.problem or skipped or self.unusable else []

    def summary(self) -> str:
        """One line for a log: the file, the labels read, the skipped ones by cause (e.g. "3 skipped: 2 row
        is blank, 1 no request id"), what was left for the next read."""
        if self.problem:
            return f"labels not used: {self.problem}"
        causes = ", ".join(f"{count} {cause}" for cause, count in self.skipped.items())
        text = f"labels {self.path}: {self.read} read, " + (
            f"{self.total_skipped} skipped: {causes}" if causes else "none skipped"
        )
        if self.pending_line:
            text += "; the last line, still being written (no newline yet), is left for the next read"
        if self.unusable:
            text += f"; not used: {'; '.join(self.unusable)}"
        return text

    def markdown(self) -> str:
        """The artifact's section: the counts by cause as a table."""
        if self.problem:
            return f"\n\n## Labels\n\nNot used: {self.problem}"
        text = f"\n\n## Labels\n\n`{self.path}`: {self.read} label rows read, {self.total_skipped} skipped"
        if self.skipped:
            text += "\n\n| skipped because | labels |\n|---|---|\n"
            text += "\n".join(f"| {cause} | {count} |" for cause, count in self.skipped.items())
        if self.pending_line:
            text += "\n\nThe last line has no newline yet: left for the next read."
        if self.unusable:
            text += "\n\nNot used:\n" + "\n".join(f"- {why}" for why in self.unusable)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "read": self.read,
            "skipped": dict(self.skipped),
            "pending_line": self.pending_line,
            "problem": self.problem,
            "unusable": list(self.unusable),
        }


def read(
    source: Settings | str | Path, target: str, task_type: str | None = None
) -> tuple[pd.DataFrame | None, LabelReadReport]:
    """The usable labels (request_id and row as text and int, `label`), the last written of each request
    row (`latest`), oldest source first and in file order within one, and the report; None when there are
    no labels yet (or none can be used at all: the report's `problem` says why). `source`: the project's
    settings (the file at monitoring.labels_path and the objects under labels/ in the store), or the path
    of one file. `task_type` "regression": targets that are not numbers are skipped (and so replace no
    earlier label)."""
    if isinstance(source, str | Path):
        return _read_file(Path(source), target, task_type)
    return read_sources(
        source.resolve(source.monitoring.labels_path), open_storage(source), target, task_type
    )


def read_sources(
    path: Path | None, store: Storage | None, target: str, task_type: str | None = None
) -> tuple[pd.DataFrame | None, LabelReadReport]:
    """The labels of the file at `path` and of the objects under labels/ in `store`, as one table (`read`)."""
    found: list[tuple[datetime, str, pd.DataFrame | None, LabelReadReport]] = []
    if path is not None and path.exists():
        labels, report = _read_file(path, target, task_type)
        found.append((datetime.fromtimestamp(path.stat().st_mtime, UTC), str(path), labels, report))
    objects = store.list(LABELS) if store is not None else []
    for listed in objects:
        assert store is not None
        name = store.url_of(listed.key)
        data = store.read_bytes(listed.key)
        if data is None:  # deleted since the listing
            continue
        labels, report = _read_data(name, data, target, task_type)
        found.append((listed.modified, name, labels, report))
    where = [str(path)] if path is not None and path.exists() else []
    if objects and store is not None:
        where.append(f"{len(objects)} object(s) under {store.url_of(LABELS)}/")
    total = LabelReadReport(" and ".join(where) or str(path or ""))
    if not found:
        return None, total
    # Object stores give modification times to the second: within one second the file goes first, then
    # the objects by name (they were listed in key order and the sort is stable).
    found.sort(key=lambda part: part[0].replace(microsecond=0))
    if len(found) == 1:
        return found[0][2], found[0][3]
    frames, problems = [], []
    for _, _, labels, report in found:
        total = replace(
            total, read=total.read + report.read, pending_line=total.pending_line or report.pending_line
        )
        for cause, count in report.skipped.items():
            total = total.skip(cause, count)
        if report.problem:
            problems.append(report.problem)
        if labels is not None:
            frames.append(labels)
    if not frames:
        return None, replace(total, problem="; ".join(problems))
    return latest(pd.concat(frames, ignore_index=True), replace(total, unusable=tuple(problems)))


def _read_file(path: Path, target: str, task_type: str | None) -> tuple[pd.DataFrame | None, LabelReadReport]:
    """The labels of one file; None when there is no file (or it cannot be used: the report says why)."""
    if not path.exists():
        return None, LabelReadReport(str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, LabelReadReport(str(path), problem=f"{path}: cannot be read ({exc})")
    return _read_data(str(path), data, target, task_type)


def _read_data(
    name: str, data: bytes, target: str, task_type: str | None
) -> tuple[pd.DataFrame | None, LabelReadReport]:
    report = LabelReadReport(name)
    try:
        table, report = _read_text_table(name, data, report)
    except DataError as exc:
        return None, replace(report, problem=str(exc))
    target = normalize_column(target)
    missing = [c for c in ("request_id", target) if c not in table.columns]
    if missing:
        problem = (
            f"{name}: labels need the columns request_id and {target} (the training target); missing: "
            f"{', '.join(missing)}"
        )
        return None, replace(report, problem=problem)
    return _usable(table, target, task_type, report)


def join(
    window: Window, labels: pd.DataFrame, report: LabelReadReport | None = None
) -> tuple[pd.DataFrame, LabelReadReport]:
    """The window's labelled request rows, oldest first: `position` (the row in the window), `request_id`,
    `row` and `label`; and `report` with the labels that found no request row counted.

    Request ids are compared as text (00042 is not 42), rows as ints. One rule for duplicates on each side:
    a later label for the same (request_id, row) replaces the earlier one, counted as superseded (`read`
    applies it already; `latest`); a request row logged more than once (a client retrying with its own
    X-Request-ID) is paired once, with the row logged last. A label whose request row is not in the window
    (older than the window, or never answered) is counted as not served."""
    report = report if report is not None else LabelReadReport("")
    labels, report = latest(labels, report)
    served = pd.DataFrame(
        {
            "position": np.arange(len(window)),
            "request_id": window.request_ids.astype(str).to_numpy(),
            "row": window.rows.astype("int64").to_numpy(),
        }
    ).drop_duplicates(["request_id", "row"], keep="last")
    keyed = pd.DataFrame(
        {
            "request_id": labels["request_id"].astype(str).to_numpy(),
            "row": labels["row"].astype("int64").to_numpy(),
            "label": labels["label"].to_numpy(),
        }
    )
    joined = served.merge(keyed, on=["request_id", "row"], how="inner", validate="one_to_one")
    joined = joined.sort_values("position", kind="stable").reset_index(drop=True)
    return joined, report.skip(NOT_SERVED, len(keyed) - len(joined))


def latest(labels: pd.DataFrame, report: LabelReadReport) -> tuple[pd.DataFrame, LabelReadReport]:
    """The last written label of each (request_id, row), in file order; the ones it replaces are counted
    as superseded."""
    superseded = labels.duplicated(["request_id", "row"], keep="last")
    return labels[~superseded].reset_index(drop=True), report.skip(SUPERSEDED, int(superseded.sum()))


def served_only(
    labels: pd.DataFrame, window: Window, report: LabelReadReport
) -> tuple[pd.DataFrame, LabelReadReport]:
    """The labels of request rows in `window` (request_id, row, label; as `join` pairs them); the others
    are counted (a request older than the window, or an id the service never answered)."""
    joined, report = join(window, labels, report)
    return joined.drop(columns="position"), report


def _read_text_table(name: str, data: bytes, report: LabelReadReport) -> tuple[pd.DataFrame, LabelReadReport]:
    """Every cell as text ("" when empty), column names normalized as in training."""
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _read_json_lines(name, data, report)
    if suffix != ".csv":
        table = _read_parquet(name, data, suffix)  # written whole (a writer writes it aside, then renames)
        text = table.map(lambda value: "" if _missing(value) else str(value))
        return text, replace(report, read=len(text))
    # The csv module up to the last newline, by hand: pandas cannot leave a half-written last line for the
    # next read, nor count lines with a field too many without its slower engine
    # (docs/decisions.md#reading-labels).
    complete = data.rfind(b"\n") + 1  # a last line without its newline is still being written
    report = replace(report, pending_line=bool(data[complete:].strip()))
    rows = list(csv.reader(io.StringIO(data[:complete].decode("utf-8-sig", errors="replace"), newline="")))
    rows = [row for row in rows if any(cell.strip() for cell in row)]  # blank lines are no labels
    if not rows:
        return pd.DataFrame(columns=["request_id"]), report
    header, rows = rows[0], rows[1:]
    width = len(header)
    report = replace(report, read=len(rows)).skip(EXTRA_FIELDS, sum(len(row) > width for row in rows))
    rows = [row + [""] * (width - len(row)) for row in rows if len(row) <= width]
    return normalize_columns(pd.DataFrame(rows, columns=header, dtype=object), name), report


def _read_parquet(name: str, data: bytes, suffix: str) -> pd.DataFrame:
    if suffix not in (".parquet", ".pq"):
        raise DataError(f"{name}: unsupported file type {suffix!r}; use .csv, .parquet, .pq or .jsonl")
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises many types for unreadable files
        raise DataError(f"{name}: cannot be read as {suffix[1:]} ({exc})") from exc
    if frame.empty:
        raise DataError(f"{name}: the file has no data rows")
    return normalize_columns(frame, name)


def _read_json_lines(name: str, data: bytes, report: LabelReadReport) -> tuple[pd.DataFrame, LabelReadReport]:
    """One JSON object per line; a line that is no object is skipped and counted, a last line without its
    newline left for the next read (as for CSV)."""
    complete = data.rfind(b"\n") + 1
    report = replace(report, pending_line=bool(data[complete:].strip()))
    rows, bad = [], 0
    for line in data[:complete].decode("utf-8-sig", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append({str(k): "" if _missing(v) else str(v) for k, v in row.items()})
        else:
            bad += 1
    report = replace(report, read=len(rows) + bad).skip(NOT_AN_OBJECT, bad)
    if not rows:
        return pd.DataFrame(columns=["request_id"]), report
    table = pd.DataFrame(rows, dtype=object).fillna("")
    return normalize_columns(table, name), report


def _usable(
    table: pd.DataFrame, target: str, task_type: str | None, report: LabelReadReport
) -> tuple[pd.DataFrame, LabelReadReport]:
    request_ids = table["request_id"].map(str.strip)
    rows = table["row"].map(_row_number) if "row" in table.columns else pd.Series(0, index=table.index)
    label: pd.Series = table[target].map(str.strip)
    causes = pd.Series("", index=table.index, dtype=object)
    causes[label == ""] = NO_TARGET
    if task_type == "regression":
        numbers = pd.to_numeric(label, errors="coerce")
        causes[~np.isfinite(numbers) & (label != "")] = NOT_A_NUMBER
        label = numbers
    bad_row = rows.map(lambda row: isinstance(row, str))
    causes[bad_row] = rows[bad_row].to_numpy(dtype=object)
    causes[request_ids == ""] = NO_REQUEST_ID  # the first cause of a label counts
    for cause, count in causes[causes != ""].value_counts(sort=False).items():
        report = report.skip(str(cause), int(count))
    ok = causes == ""
    labels = pd.DataFrame(
        {"request_id": request_ids[ok], "row": rows[ok].astype("int64"), "label": label[ok]}
    )
    return latest(labels, report)


def _row_number(text: str) -> int | str:
    """The row as an int, or why it is none: blank, not a whole number (1.0 is one), or out of range."""
    text = text.strip()
    if not text:
        return ROW_BLANK
    try:
        number = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return ROW_NOT_INTEGER
        if math.isinf(value):
            return ROW_OUT_OF_RANGE
        if math.isnan(value) or not value.is_integer():
            return ROW_NOT_INTEGER
        number = int(value)
    return number if 0 <= number <= ROW_MAX else ROW_OUT_OF_RANGE


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
