"""The request log: every prediction the service makes, one JSON line each (a RequestRecord, records.py),
for the monitor flow and training's feedback.

Writing must never slow down or fail a prediction, so the service only puts records into a bounded
in-memory queue (`put_nowait`, no waiting) and one background thread writes them to disk. A record that
does not reach the file is counted in the `<package>_request_log_dropped_total` Prometheus metric by cause:
`buffer_full` (the disk is slower than the traffic), `write_failed` (the file cannot be written: a folder
without permission, a full disk) or `unserializable`; so a gap in the log is visible on /metrics instead of
silent. While the file cannot be written, `problem()` names it and the cause (the service's /readyz answers
503 with it), the service log says so once and then at most every REPEAT_SECONDS with the records lost,
and each readiness check asks the writer to try again, so the log recovers without waiting for traffic.

Files rotate by size with the standard library's RotatingFileHandler: it is the rotation every Python
operator already knows (`requests.jsonl`, `requests.jsonl.1`, ...), needs no extra dependency and is safe
across threads. It is not safe for several processes sharing one file, so with more than one BentoML
worker each worker writes its own file (`requests.w2.jsonl` for worker 2); `log_files` and `read_records`
find them all.

Retention follows time: a rotated file is kept until its newest record is older than
`serving.request_log_retention_hours` (at least the monitor's window), so the monitor's window is whole
whatever the traffic; `backups` (rotated files at most) is only the ceiling on disk use. The standard
library has no handler that rotates by size and keeps by age, hence the small subclass below.

A line can be torn: a process killed in the middle of a write, a full disk. The reader skips and counts
such lines (naming file and line) instead of failing on them, and the writer starts on a fresh line when
it finds the file ending mid-line, so the next record is never glued onto the fragment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO, Any

from prometheus_client import Counter

from ..config import PACKAGE
from ..records import RequestRecord

DROPPED = Counter(
    f"{PACKAGE}_request_log_dropped",
    "Request log records dropped, by cause: buffer_full (the disk is slower than the traffic), write_failed "
    "(the file cannot be written: /readyz and the service log name it and why), unserializable",
    ["cause"],
)
BUFFER_FULL, WRITE_FAILED, UNSERIALIZABLE = "buffer_full", "write_failed", "unserializable"
REPEAT_SECONDS = 60.0  # a write failure that goes on is logged again at most this often, with its count
_STOP = object()
_PROBE = object()  # asks the writer to try the file again while it cannot be written
WRITE_BATCH = 1000  # records per write at most
OPEN_ATTEMPTS = 5
LOGGER = logging.getLogger(__name__)


def worker_path(path: str | Path, worker: int | None) -> Path:
    """The file one worker writes: the configured path for worker 1 (or no worker), else `<stem>.w<n>`."""
    path = Path(path)
    if not worker or worker == 1:
        return path
    return path.with_name(f"{path.stem}.w{worker}{path.suffix}")


class RequestLog:
    """A bounded, non-blocking JSON-lines sink, rotated by size and kept by age."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 10_000_000,
        backups: int = 100,
        buffer: int = 10_000,
        retention_hours: float | None = None,
        dropped: Any = DROPPED,
    ) -> None:
        """`retention_hours`: rotated files whose newest record is older are deleted; None: the setting
        serving.request_log_retention_hours (the service passes the size settings only)."""
        if retention_hours is None:
            from ..config import get_settings

            retention_hours = get_settings().serving.request_log_retention_hours
        self.path = Path(path)
        self.dropped = 0
        self._dropped_metric = dropped
        for cause in (BUFFER_FULL, WRITE_FAILED, UNSERIALIZABLE):  # every cause on /metrics from the start
            dropped.labels(cause=cause)
        self._outage: _Outage | None = None  # set and cleared by the writer thread once it runs
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=buffer)
        self._handler = _RotatingByAge(
            self.path, max_bytes=max_bytes, backups=backups, retention_seconds=retention_hours * 3600
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        try:  # a folder that cannot be written shows at once, not at the first request
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.open("a", encoding="utf-8").close()
            self._handler.prune()
        except OSError as exc:
            self._failed(exc, 0)
        self._chunk_bytes = max(1, max_bytes // 10)
        self._thread = threading.Thread(target=self._drain, name="request-log", daemon=True)
        self._thread.start()

    def submit(self, records: Iterable[RequestRecord]) -> int:
        """Queue records without ever waiting; returns how many were dropped (and counted): no room."""
        lost = 0
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                lost += 1
        self._count_dropped(lost, BUFFER_FULL)
        return lost

    def _count_dropped(self, lost: int, cause: str) -> None:
        if lost:
            self.dropped += lost
            self._dropped_metric.labels(cause=cause).inc(lost)

    def problem(self) -> str | None:
        """Why records cannot be written now, naming the file and the cause; None when they can. While they
        cannot, each call asks the writer to try the file again (an empty line), since a service that
        reports not ready gets no traffic whose records would."""
        if not self._thread.is_alive():
            return f"the request log writer for {self.path} has stopped"
        outage = self._outage
        if outage is None:
            return None
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_PROBE)
        return f"cannot write the request log {self.path}: {outage.cause} ({outage.dropped} records dropped)"

    def _failed(self, exc: BaseException, lost: int) -> None:
        """Note a failed write of `lost` records: logged when it starts or its cause changes, then at most
        every REPEAT_SECONDS with the records lost meanwhile, never once per record."""
        cause = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
        outage, now = self._outage, time.monotonic()
        if outage is None or outage.cause != cause:
            LOGGER.error(
                "request log: cannot write %s (%s); its records are dropped and counted in "
                '%s_request_log_dropped_total{cause="%s"}, and /readyz answers 503 until it can be written',
                self.path,
                cause,
                PACKAGE,
                WRITE_FAILED,
            )
            before = outage.dropped if outage else 0
            self._outage = _Outage(cause, before + lost, now, reported=before)
            return
        outage.dropped += lost
        if now - outage.logged >= REPEAT_SECONDS:
            LOGGER.error(
                "request log: still cannot write %s (%s): %d records dropped in the last %.0f s",
                self.path,
                cause,
                outage.dropped - outage.reported,
                now - outage.logged,
            )
            outage.logged, outage.reported = now, outage.dropped

    def _written(self) -> None:
        outage = self._outage
        if outage is not None:
            self._outage = None
            LOGGER.warning(
                "request log: writing to %s again; %d records were dropped in the %.0f s it could not be "
                "written",
                self.path,
                outage.dropped,
                time.monotonic() - outage.since,
            )

    def _drain(self) -> None:
        while True:
            records = [self._queue.get()]
            # Whatever else is queued goes out in few writes: one write (and flush) per record cost the
            # service CPU on every request (docs/decisions.md#request-log-writes). Each write is at most a
            # tenth of max_bytes, so files still rotate before they pass max_bytes.
            with contextlib.suppress(queue.Empty):
                while len(records) < WRITE_BATCH:
                    records.append(self._queue.get_nowait())
            stop = any(record is _STOP for record in records)
            try:
                lines = [line for record in records if not _signal(record) and (line := self._line(record))]
                for message, count in chunks(lines, self._chunk_bytes):
                    self._write(message, count)
                if not lines and self._outage is not None and any(record is _PROBE for record in records):
                    self._write("", 0)  # an empty line (readers skip it): can the file be written?
            except Exception:  # a failed write must not stop the thread: the records after it still count
                LOGGER.exception("request log: %d records could not be written", len(records))
            finally:
                for _ in records:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, message: str, count: int) -> None:
        self._handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))
        failure, self._handler.failure = self._handler.failure, None
        if failure is None:
            self._written()
        else:  # not in the log (a folder without permission, a full disk): count them
            self._count_dropped(count, WRITE_FAILED)
            self._failed(failure, count)

    def _line(self, record: RequestRecord) -> str | None:
        try:
            return record.line()
        except (TypeError, ValueError):  # one record that cannot be written must not lose the others
            LOGGER.exception("request log: a record could not be written")
            self._count_dropped(1, UNSERIALIZABLE)
            return None

    def flush(self) -> None:
        """Wait until every queued record is on disk (tests and shutdown)."""
        self._queue.join()

    def close(self, timeout: float = 10) -> None:
        """Write what is queued, then stop the thread and close the file."""
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout)
            self._thread.join(timeout)
        self._handler.close()


def _signal(record: Any) -> bool:
    return record is _STOP or record is _PROBE


@dataclass
class _Outage:
    """A time the file could not be written: the cause, the records lost, when the log last said so."""

    cause: str
    dropped: int
    since: float
    reported: int = 0
    logged: float = field(init=False)

    def __post_init__(self) -> None:
        self.logged = self.since


class _RotatingByAge(RotatingFileHandler):
    """RotatingFileHandler that deletes rotated files by age (backups is the ceiling), starts on a fresh
    line when the file ends mid-line (a writer killed mid-write), and notes a failed write's error."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int, retention_seconds: float) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.retention_seconds = retention_seconds
        self.failure: BaseException | None = None
        self._fresh_line_checked = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self._fresh_line_checked:
            self._fresh_line_checked = end_torn_line(Path(self.baseFilename))
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        # The write may have left part of a line on disk and the rest in the stream's buffer: drop the
        # stream (and that rest), and start the next write on a fresh line of a reopened file. RequestLog
        # reports the error (once, not per write).
        self.failure = sys.exc_info()[1] or OSError(f"a write to {self.baseFilename} failed")
        self._fresh_line_checked = False
        if self.stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self.stream.close()
            self.stream = None  # reopened by the next emit (delay=True)

    def doRollover(self) -> None:  # noqa: N802 (logging's name)
        super().doRollover()
        self.prune()

    def prune(self) -> None:
        """Delete rotated files whose newest record is older than the retention (oldest first)."""
        oldest_kept = time.time() - self.retention_seconds
        for number in range(self.backupCount, 0, -1):
            backup = Path(f"{self.baseFilename}.{number}")
            with contextlib.suppress(FileNotFoundError):
                if backup.stat().st_mtime < oldest_kept:
                    backup.unlink()


def end_torn_line(path: Path) -> bool:
    """Add a newline when `path` ends mid-line, so the next record starts on its own line; True when the
    file is now safe to append to (also when it does not exist yet)."""
    try:
        with path.open("rb+") as file:
            if file.seek(0, os.SEEK_END) == 0:
                return True
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
                LOGGER.warning("request log: %s ended mid-line (torn write); continuing on a new line", path)
    except FileNotFoundError:
        pass
    except OSError:  # the write that follows fails too, and is reported: no second message for one cause
        return False
    return True


def chunks(lines: list[str], max_bytes: int) -> Iterator[tuple[str, int]]:
    """The lines joined into messages of at most max_bytes characters (a longer line goes alone), each
    with its number of lines."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > max_bytes:
            yield "\n".join(chunk), len(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        yield "\n".join(chunk), len(chunk)


def log_files(path: str | Path) -> list[Path]:
    """Every file of the log at `path`: all workers' files and their rotated backups, oldest first."""
    path = Path(path)
    pattern = _name_pattern(path)
    found = [p for p in path.parent.glob(f"{path.stem}*") if pattern.match(p.name)]

    def age(p: Path) -> tuple[int, str]:
        # A higher backup number is older; the live file (no number) is the newest of its worker.
        match = pattern.match(p.name)
        return (-int(match.group(3)) if match and match.group(3) else 0, p.name)

    return sorted(found, key=age)


def _name_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(path.stem)}(\.w\d+)?{re.escape(path.suffix)}(\.(\d+))?$")


@dataclass(frozen=True)
class BadLine:
    """A line of the log that is no record: torn by a killed writer or a full disk, or edited by hand."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.reason})"


@dataclass
class ReadReport:
    """What reading the log found besides its records: the lines it skipped, and for each worker's log
    (named by its live file) the oldest record's time and how many rotated files it has."""

    bad_lines: list[BadLine] = field(default_factory=list)
    oldest: dict[str, datetime] = field(default_factory=dict)
    backups: dict[str, int] = field(default_factory=dict)

    def summary(self, shown: int = 5) -> str:
        """One line: how many lines were skipped and where (the first `shown` of them)."""
        return describe_bad_lines(self.bad_lines, shown)


def describe_bad_lines(bad_lines: list[BadLine], shown: int = 5) -> str:
    where = ", ".join(str(bad) for bad in bad_lines[:shown])
    more = f" and {len(bad_lines) - shown} more" if len(bad_lines) > shown else ""
    return f"{len(bad_lines)} unreadable lines skipped: {where}{more}"


def read_records(path: str | Path, report: ReadReport | None = None) -> Iterator[RequestRecord]:
    """The records in every file of the log, oldest file first. A line that is no RequestRecord (not JSON,
    a key it requires missing, a time without its zone, ...) is skipped, logged with its file and line,
    and counted in `report`; a last line still being written (no newline yet) is skipped."""
    report = report if report is not None else ReadReport()
    pattern = _name_pattern(Path(path))
    with contextlib.ExitStack() as opened:
        for file, lines in _open_at_once(path, opened):
            match = pattern.match(file.name)
            live = file.name[: match.start(2)] if match and match.group(2) else file.name
            if live != file.name:
                report.backups[live] = report.backups.get(live, 0) + 1
            yield from _records_of(file, lines, live, report)


def _records_of(file: Path, lines: IO[str], live: str, report: ReadReport) -> Iterator[RequestRecord]:
    bad = []
    with lines:
        for number, line in enumerate(lines, start=1):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                record = RequestRecord.parse(line.rstrip("\n"))
            except ValueError as exc:
                bad.append(BadLine(file, number, str(exc)))
                continue
            if live not in report.oldest or record.time < report.oldest[live]:
                report.oldest[live] = record.time
            yield record
    if bad:
        LOGGER.warning("request log %s: %s", file, describe_bad_lines(bad))
        report.bad_lines += bad


def _open_at_once(path: str | Path, opened: contextlib.ExitStack) -> list[tuple[Path, IO[str]]]:
    """Every file of the log, opened together before any is read. A rotation renames every file of a worker
    (the live file becomes .1, .1 becomes .2, ...): a file read by name after it would be another file's
    content, or gone (a monitor failed on that under load). An open file keeps its content whatever its name
    becomes, so the files are opened at one moment, checked against the names they were listed by, and
    opened again when a rotation came in between (microseconds, against seconds between rotations)."""
    for _ in range(OPEN_ATTEMPTS):
        files = log_files(path)
        handles: list[tuple[Path, IO[str]]] = []
        try:
            for file in files:
                handles.append((file, file.open(encoding="utf-8", errors="replace")))
            unchanged = log_files(path) == files and all(
                os.stat(file).st_ino == os.fstat(handle.fileno()).st_ino for file, handle in handles
            )
        except FileNotFoundError:
            unchanged = False
        if unchanged:
            for _, handle in handles:
                opened.callback(handle.close)
            return handles
        for _, handle in handles:
            handle.close()
    raise RuntimeError(f"{path}: the log rotated on each of {OPEN_ATTEMPTS} tries to open it; read it again")
