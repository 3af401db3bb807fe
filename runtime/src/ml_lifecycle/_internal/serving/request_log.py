"""The request log: every prediction the service makes, one JSON line each (a RequestRecord, records.py),
for the monitor flow and training's feedback, kept in the project's store (storage.url) so that every
replica's traffic reaches a monitor running anywhere.

Writing must never slow down or fail a prediction, so the service only puts records into a bounded
in-memory queue (`put_nowait`, no waiting) and one background thread per worker writes them out as
immutable objects, every `serving.request_log_flush_seconds` or `request_log_flush_records` records:

    requests/date=YYYY-MM-DD/hour=HH/<replica>-<worker>-<seq>.jsonl

partitioned by the records' own time (UTC), the layout SageMaker's data capture uses, so a reader lists
only the hours of its window. Objects are written whole and create-only: no two writers ever share one,
none is appended to, so there is no rotation, no lock and no torn line from a killed writer. `seq` grows
with the clock (microseconds), so a restarted replica of the same name never collides with its past.

What a replica loses when killed is what it had not flushed yet: at most one flush, shown beforehand by
`<package>_request_log_pending`. Nothing is dropped silently: `<package>_request_log_dropped_total` counts
by cause `buffer_full` (the queue is full: traffic faster than the writer), `write_failed` (the store has
failed for so long that the records kept for it passed `serving.request_log_buffer`) and
`unserializable`; `<package>_request_log_written_total` counts what reached the store. A store that fails
(unreachable, refusing, a full disk) costs no request: its records are kept, the write is retried with a
growing pause, and the service log says so once, then at most every REPEAT_SECONDS with the count.

Retention follows time: the writer deletes partitions whose hour ended more than
`serving.request_log_retention_hours` ago (at least the monitor's window), at start and hourly; several
replicas doing so at once delete the same objects, which is harmless.

Release 2.0.0 wrote a rotating file per worker at `serving.request_log_path`; nothing writes it any more,
but `read_records` still reads it, so the monitor's and training's windows keep the traffic logged before
an upgrade until it ages out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from ..config import PACKAGE
from ..records import RequestRecord
from ..storage import REQUESTS, Storage, StorageError

if TYPE_CHECKING:
    from ..config import Settings

BUFFER_FULL, WRITE_FAILED, UNSERIALIZABLE = "buffer_full", "write_failed", "unserializable"
REPEAT_SECONDS = 60.0  # a store failure that goes on is logged again at most this often, with its count
MAX_RETRY_SECONDS = 60.0  # the longest pause between two tries of a failing store
PRUNE_SECONDS = 3600.0  # how often a writer deletes partitions past the retention
READ_THREADS = 8  # objects fetched at once by a window read (object stores answer each in tens of ms)
OPEN_ATTEMPTS = 5  # tries to open a 2.0.0 log's files between two rotations
NAME_ATTEMPTS = 5  # object names tried before a writer gives up a flush (another writer has its name)
_STOP = object()
LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogMetrics:
    """The writer's Prometheus metrics; tests make their own on a fresh registry to see only their counts."""

    written: Counter
    pending: Gauge
    dropped: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> LogMetrics:
        metrics = cls(
            Counter(
                f"{PACKAGE}_request_log_written",
                "Request log records written to the store (storage.url, requests/)",
                registry=registry,
            ),
            Gauge(
                f"{PACKAGE}_request_log_pending",
                "Request log records accepted but not yet in the store: what killing the service now loses",
                multiprocess_mode="livesum",
                registry=registry,
            ),
            Counter(
                f"{PACKAGE}_request_log_dropped",
                "Request log records dropped, by cause: buffer_full (traffic faster than the writer), "
                "write_failed (the store failed until serving.request_log_buffer records waited for it: the "
                "service log names it and why), unserializable",
                ["cause"],
                registry=registry,
            ),
        )
        for cause in (BUFFER_FULL, WRITE_FAILED, UNSERIALIZABLE):  # every cause on /metrics from the start
            metrics.dropped.labels(cause=cause)
        return metrics


METRICS = LogMetrics.create()
DROPPED = METRICS.dropped


def replica_name(configured: str = "") -> str:
    """This replica's name in the objects it writes: serving.replica, else the host name (which is the
    pod's name in Kubernetes and the container's id in Docker, as $HOSTNAME there); characters a key should
    not carry become `_`."""
    name = configured or socket.gethostname() or "replica"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def partition(hour: datetime) -> str:
    """The folder of the records served in `hour` (UTC)."""
    hour = hour.astimezone(UTC)
    return f"{REQUESTS}/date={hour:%Y-%m-%d}/hour={hour:%H}"


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class RequestLog:
    """A bounded, non-blocking sink that writes its records to the store as immutable objects."""

    def __init__(
        self,
        store: Storage,
        *,
        replica: str = "",
        worker: int | None = None,
        flush_seconds: float = 5.0,
        flush_records: int = 1000,
        buffer: int = 10_000,
        retention_hours: float = 24.0,
        metrics: LogMetrics = METRICS,
    ) -> None:
        self.store = store
        self.name = f"{replica_name(replica)}-{worker or 1}"
        self.flush_seconds = flush_seconds
        self.flush_records = max(1, min(flush_records, buffer))
        self.buffer = buffer
        self.retention = timedelta(hours=retention_hours)
        self.metrics = metrics
        self.written = 0
        self.dropped = 0
        self._pending: deque[RequestRecord] = deque()
        # Records wait in a deque the writer drains when a flush is due, not in a queue.Queue: its put wakes
        # the writer for every record, and each wake-up took the GIL from the event loop in the middle of
        # a request (docs/decisions.md#request-log-writes). A deque's append and popleft are atomic.
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()  # set: a flush is due now (enough records, flush(), close())
        self._flushed = threading.Condition()
        self._flush_asked = 0  # flush() calls asked for / answered, under _flushed
        self._flush_done = 0
        self._seq = 0
        self._outage: _Outage | None = None
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, settings: Settings, worker: int | None = None) -> RequestLog:
        """The log of one service worker, as the settings say."""
        from ..storage import open_storage

        serving = settings.serving
        return cls(
            open_storage(settings),
            replica=serving.replica,
            worker=worker,
            flush_seconds=serving.request_log_flush_seconds,
            flush_records=serving.request_log_flush_records,
            buffer=serving.request_log_buffer,
            retention_hours=serving.request_log_retention_hours,
        )

    @property
    def pending(self) -> int:
        """Records accepted and not yet in the store (queued, or waiting for the next flush)."""
        return len(self._queue) + len(self._pending)

    def submit(self, records: Iterable[RequestRecord]) -> int:
        """Queue records without ever waiting; returns how many were dropped (and counted): no room."""
        accepted = lost = 0
        for record in records:
            if len(self._queue) < self.buffer:
                self._queue.append(record)
                accepted += 1
            else:
                lost += 1
        if accepted:
            self.metrics.pending.inc(accepted)
            if len(self._queue) >= self.flush_records and not self._wake.is_set():
                self._wake.set()
        self._count_dropped(lost, BUFFER_FULL)
        return lost

    def problem(self) -> str | None:
        """Why records cannot be logged at all: only a stopped writer (a store that fails costs no
        request; its records wait, counted in the pending metric). None when the writer runs."""
        if not self._thread.is_alive():
            return f"the request log writer for {self.store.url_of(REQUESTS)} has stopped"
        return None

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything accepted so far now (tests and shutdown); True when nothing is left pending
        (False: the store failed, the records are still kept)."""
        with self._flushed:
            self._flush_asked += 1
            asked = self._flush_asked
        self._signal(_FLUSH)
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._flush_done < asked and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0 or not self._flushed.wait(left):
                    break
        return self.pending == 0

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._signal(_STOP)
            self._thread.join(timeout)

    def _signal(self, item: object) -> None:
        """Hand the writer a flush or stop request, after every record submitted so far."""
        self._queue.append(item)
        self._wake.set()

    def _count_dropped(self, lost: int, cause: str) -> None:
        if lost:
            self.dropped += lost
            self.metrics.dropped.labels(cause=cause).inc(lost)

    def _run(self) -> None:
        """The writer thread: collect, write when due, retry a failing store, prune by age. It must not die:
        a failure of one step is logged and the loop goes on."""
        next_flush = time.monotonic() + self.flush_seconds
        next_prune = time.monotonic()
        while True:
            items = self._take(max(0.0, min(next_flush, next_prune) - time.monotonic()))
            stop = any(item is _STOP for item in items)
            asked = sum(item is _FLUSH for item in items)
            self._pending.extend(item for item in items if isinstance(item, RequestRecord))
            now = time.monotonic()
            due = stop or asked or now >= next_flush or len(self._pending) >= self.flush_records
            try:
                if due and self._pending and (stop or asked or now >= self._retry_at):
                    self._write_pending()
                self._drop_beyond_buffer()
                if now >= next_prune:
                    next_prune = now + PRUNE_SECONDS
                    self._prune_quietly()
            except Exception:  # the next round tries again; the records stay pending
                LOGGER.exception("request log: the writer's round failed; retrying")
            if due:
                next_flush = time.monotonic() + self.flush_seconds
            if asked:
                with self._flushed:
                    self._flush_done += asked
                    self._flushed.notify_all()
            if stop:
                self._lost_at_close()
                return

    def _lost_at_close(self) -> None:
        """Records the store still refused when the writer stopped: dropped, counted and said."""
        lost = len(self._pending)
        if lost:
            self._pending.clear()
            self.metrics.pending.dec(lost)
            self._count_dropped(lost, WRITE_FAILED)
            LOGGER.error(
                "request log: %d records could not be written to %s before the service stopped",
                lost,
                self.store.url_of(REQUESTS),
            )

    def _take(self, wait: float) -> list[Any]:
        """What is queued once a flush is due, or after `wait` seconds: at most `buffer` records (and the
        flush and stop requests among them)."""
        if wait > 0:
            self._wake.wait(wait)
        self._wake.clear()  # before draining: what is added from now on sets it again
        items: list[Any] = []
        with contextlib.suppress(IndexError):
            while len(items) < self.buffer:
                items.append(self._queue.popleft())
        if self._queue:  # more than one take's worth (a buffer's) is waiting: come back at once
            self._wake.set()
        return items

    def _write_pending(self) -> None:
        """One object per hour among the pending records; what the store refuses stays pending."""
        by_hour: dict[datetime, list[RequestRecord]] = defaultdict(list)
        for record in self._pending:
            by_hour[_hour(record.time)].append(record)
        kept: list[RequestRecord] = []
        failure: BaseException | None = None
        for hour, records in sorted(by_hour.items()):
            good = [(record, line) for record in records if (line := self._line(record)) is not None]
            if len(good) < len(records):  # unserializable: dropped and counted by _line
                self.metrics.pending.dec(len(records) - len(good))
            if not good:
                continue
            lines = [line for _, line in good]
            if failure is None:
                try:
                    self._put(hour, ("\n".join(lines) + "\n").encode())
                except Exception as exc:  # a store error of any kind: keep the records, try again later
                    failure = exc
            if failure is not None:
                kept += [record for record, _ in good]
                continue
            self.written += len(lines)
            self.metrics.written.inc(len(lines))
            self.metrics.pending.dec(len(lines))
        self._pending = deque(kept)
        if failure is None:
            self._recovered()
        else:
            self._failed(failure)

    def _put(self, hour: datetime, data: bytes) -> None:
        for _ in range(NAME_ATTEMPTS):
            self._seq = max(self._seq + 1, time.time_ns() // 1000)
            if self.store.create(f"{partition(hour)}/{self.name}-{self._seq}.jsonl", data):
                return
        raise RuntimeError(
            f"{NAME_ATTEMPTS} object names under {partition(hour)} taken: another writer is "
            f"named {self.name} (set serving.replica)"
        )

    def _line(self, record: RequestRecord) -> str | None:
        try:
            return record.line()
        except (TypeError, ValueError):  # one record that cannot be written must not lose the others
            LOGGER.exception("request log: a record could not be written")
            self._count_dropped(1, UNSERIALIZABLE)
            return None

    def _drop_beyond_buffer(self) -> None:
        """While the store fails, at most `buffer` records wait for it; older ones are dropped, counted."""
        excess = len(self._pending) - self.buffer
        if excess > 0:
            for _ in range(excess):
                self._pending.popleft()
            self.metrics.pending.dec(excess)
            self._count_dropped(excess, WRITE_FAILED)
            if self._outage is not None:
                self._outage.dropped += excess

    def _failed(self, exc: BaseException) -> None:
        """Note a failed write: logged when it starts or its cause changes, then at most every
        REPEAT_SECONDS with the records dropped meanwhile; the next try waits longer each time."""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # The same cause whatever object and however long it took: the store's explanation, not its details.
        cause = re.sub(r"\S*requests/date=\S*", "...", text.split(" [", 1)[0])
        outage, now = self._outage, time.monotonic()
        if outage is None or outage.cause != cause:
            LOGGER.error(
                "request log: cannot write to %s (%s); %d records are kept and retried (up to "
                "serving.request_log_buffer, then dropped and counted in "
                '%s_request_log_dropped_total{cause="%s"})',
                self.store.url_of(REQUESTS),
                cause,
                len(self._pending),
                PACKAGE,
                WRITE_FAILED,
            )
            failures = outage.failures if outage else 0
            self._outage = outage = _Outage(cause, outage.dropped if outage else 0, now, failures=failures)
        elif now - outage.logged >= REPEAT_SECONDS:
            LOGGER.error(
                "request log: still cannot write to %s (%s): %d records wait, %d dropped in the last %.0f s",
                self.store.url_of(REQUESTS),
                cause,
                len(self._pending),
                outage.dropped - outage.reported,
                now - outage.logged,
            )
            outage.logged, outage.reported = now, outage.dropped
        outage.failures += 1
        self._retry_at = now + min(MAX_RETRY_SECONDS, self.flush_seconds * 2 ** min(outage.failures, 10))

    def _recovered(self) -> None:
        outage, self._outage, self._retry_at = self._outage, None, 0.0
        if outage is not None:
            LOGGER.warning(
                "request log: writing to %s again; %d records were dropped in the %.0f s it failed",
                self.store.url_of(REQUESTS),
                outage.dropped,
                time.monotonic() - outage.since,
            )

    def _prune_quietly(self) -> None:
        """Retention must not disturb writing: a store that refuses it is said once an hour, in one line."""
        try:
            self.prune()
        except StorageError as exc:
            LOGGER.warning("request log: old partitions not deleted this hour: %s", exc)

    def prune(self, now: datetime | None = None) -> int:
        """Delete the partitions whose hour ended more than the retention ago; returns the objects deleted."""
        return prune(self.store, (now or datetime.now(UTC)) - self.retention)


_FLUSH = object()


@dataclass
class _Outage:
    """A time the store refused the writes: the cause, records dropped, when the log last said so."""

    cause: str
    dropped: int
    since: float
    reported: int = 0
    failures: int = 0
    logged: float = field(init=False)

    def __post_init__(self) -> None:
        self.logged = self.since


def prune(store: Storage, cutoff: datetime) -> int:
    """Delete every request-log partition whose hour ended before `cutoff`: one listing of the dates, one
    of the hours of the day the cutoff falls in, then the objects of what is past it."""
    deleted = 0
    for day_folder in store.folders(REQUESTS):
        day = _folder_value(day_folder, "date")
        if day is None or day > cutoff.astimezone(UTC).date():
            continue
        for hour_folder in store.folders(day_folder):
            start = _partition_hour(hour_folder)
            if start is not None and start + timedelta(hours=1) <= cutoff:
                for listed in store.list(hour_folder):
                    store.delete(listed.key)
                    deleted += 1
    return deleted


def _folder_value(folder: str, name: str) -> date | None:
    match = re.search(rf"{name}=(\d{{4}}-\d{{2}}-\d{{2}})$", folder)
    return date.fromisoformat(match.group(1)) if match else None


def _partition_hour(folder: str) -> datetime | None:
    """The hour a partition folder holds (`.../date=2026-01-10/hour=12`), None for a foreign folder."""
    match = re.search(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$", folder)
    if not match:
        return None
    return datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}:00+00:00")


def window_prefixes(start: datetime, end: datetime) -> list[str]:
    """The folders holding the records from `start` to `end`: a whole day as one date folder (one listing),
    the hours of a day the window cuts one by one, so nothing outside the window is listed."""
    first, last = _hour(start), _hour(end - timedelta(microseconds=1))
    prefixes: list[str] = []
    hour = first
    while hour <= last:
        day_start = hour.replace(hour=0)
        if hour == day_start and day_start + timedelta(days=1) <= last + timedelta(hours=1):
            prefixes.append(partition(hour).rsplit("/", 1)[0])
            hour = day_start + timedelta(days=1)
        else:
            prefixes.append(partition(hour))
            hour += timedelta(hours=1)
    return prefixes


def read_store(store: Storage, start: datetime, end: datetime, report: ReadReport) -> list[RequestRecord]:
    """Every replica's records from the partitions of the window (start <= time < end), oldest first; a
    line that is no record is skipped and counted in `report`, named by its object and line. The report's
    `oldest` is the oldest record read, or the start of an older partition when one exists (the log then
    reaches back before the window)."""
    if end <= start:
        return []
    with ThreadPoolExecutor(READ_THREADS) as pool:
        keys = [listed.key for found in pool.map(store.list, window_prefixes(start, end)) for listed in found]
        contents = list(pool.map(store.read_bytes, keys))
    records: list[RequestRecord] = []
    name = store.url_of(REQUESTS)
    for key, data in zip(keys, contents, strict=True):
        if data is None:  # deleted by retention between the listing and the read
            continue
        lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
        records += [r for r in _parse(store.url_of(key), lines, name, report) if start <= r.time < end]
    records.sort(key=lambda record: record.time)
    if name not in report.oldest or report.oldest[name] > start:
        older = _older_partition(store, start)
        if older is not None:
            report.oldest[name] = older
    return records


def _older_partition(store: Storage, start: datetime) -> datetime | None:
    """The start of a partition older than the window's first hour, if there is one."""
    first = _hour(start)
    days = [d for f in store.folders(REQUESTS) if (d := _folder_value(f, "date")) and d <= first.date()]
    for day in sorted(days, reverse=True):
        day_folder = partition(datetime(day.year, day.month, day.day, tzinfo=UTC)).rsplit("/", 1)[0]
        hours = [h for f in store.folders(day_folder) if (h := _partition_hour(f)) and h < first]
        if hours:
            return min(hours)
    return None


def _parse(where: str, lines: Iterable[str], name: str, report: ReadReport) -> Iterator[RequestRecord]:
    """The records of one object or file (named `where`), counting the oldest under `name` and each line
    that is no record; a last line without its newline (a file still being written) is left out."""
    bad = []
    for number, line in enumerate(lines, start=1):
        if not line.endswith("\n") or not line.strip():
            continue
        try:
            record = RequestRecord.parse(line.rstrip("\n"))
        except ValueError as exc:
            bad.append(BadLine(where, number, str(exc)))
            continue
        if name not in report.oldest or record.time < report.oldest[name]:
            report.oldest[name] = record.time
        yield record
    if bad:
        LOGGER.warning("request log %s: %s", where, describe_bad_lines(bad))
        report.bad_lines += bad


@dataclass(frozen=True)
class BadLine:
    """A line of the log that is no record: an object or file edited by hand or not ours, or a 2.0.0 file
    torn by a killed writer or a full disk."""

    file: str | Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.reason})"


@dataclass
class ReadReport:
    """What reading the log found besides its records: the lines it skipped, the oldest record of each
    source (the store, or a 2.0.0 worker's file), and how many rotated files each 2.0.0 file has."""

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


# 2.0.0's rotating files, read only: `requests.jsonl`, `requests.jsonl.1`, ... and `requests.w2.jsonl` for
# worker 2.


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
    with lines:
        yield from _parse(str(file), lines, live, report)


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
