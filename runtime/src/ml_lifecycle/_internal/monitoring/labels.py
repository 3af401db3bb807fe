"""Labels as they come back from your system: a CSV or Parquet table of `request_id`, `row` (optional, 0
when absent) and the target column, read so that no label can stop the monitor or a retrain.

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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..tables import DataError, normalize_column, normalize_columns, read_table

if TYPE_CHECKING:
    from .served_traffic import Window

# Why a label was skipped; the texts are the keys of LabelReadReport.skipped and what the counts are shown as.
EXTRA_FIELDS = "a line with more fields than the header"
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
        unusable = any(cause != NOT_SERVED for cause in self.skipped)
        return [self.summary()] if self.problem or unusable else []

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
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "read": self.read,
            "skipped": dict(self.skipped),
            "pending_line": self.pending_line,
            "problem": self.problem,
        }


def read(
    path: str | Path, target: str, task_type: str | None = None
) -> tuple[pd.DataFrame | None, LabelReadReport]:
    """The usable labels (request_id and row as text and int, `label`), the last written of each request
    row (`latest`), in file order, and the report; None when there is no labels file (or it cannot be used
    at all: the report's `problem` says why). `task_type` "regression": targets that are not numbers are
    skipped (and so replace no earlier label)."""
    path = Path(path)
    report = LabelReadReport(str(path))
    if not path.exists():
        return None, report
    try:
        table, report = _read_text_table(path, report)
    except DataError as exc:
        return None, replace(report, problem=str(exc))
    target = normalize_column(target)
    missing = [c for c in ("request_id", target) if c not in table.columns]
    if missing:
        problem = (
            f"{path}: labels need the columns request_id and {target} (the training target); missing: "
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


def _read_text_table(path: Path, report: LabelReadReport) -> tuple[pd.DataFrame, LabelReadReport]:
    """Every cell as text ("" when empty), column names normalized as in training."""
    if path.suffix.lower() != ".csv":
        table = read_table(path)  # Parquet is written whole (a writer should write it aside, then rename)
        text = table.map(lambda value: "" if _missing(value) else str(value))
        return text, replace(report, read=len(text))
    # The csv module up to the last newline, by hand: pandas cannot leave a half-written last line for the
    # next read, nor count lines with a field too many without its slower engine
    # (docs/decisions.md#reading-labels).
    data = path.read_bytes()
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
    return normalize_columns(pd.DataFrame(rows, columns=header, dtype=object), str(path)), report


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
