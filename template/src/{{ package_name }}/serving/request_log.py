"""The request log: every prediction the service makes, one JSON line each, for the monitor flow.

Writing must never slow down or fail a prediction, so the service only puts records into a bounded
in-memory queue (`put_nowait`, no waiting) and one background thread writes them to disk. When the queue
is full (the disk is slower than the traffic) the records are dropped, and every dropped record is counted
in the `<package>_request_log_dropped_total` Prometheus metric, so a gap in the log is visible on /metrics
instead of silent.

Files rotate by size with the standard library's RotatingFileHandler: it is the rotation every Python
operator already knows (`requests.jsonl`, `requests.jsonl.1`, ...), needs no extra dependency and is safe
across threads. It is not safe for several processes sharing one file, so with more than one BentoML
worker each worker writes its own file (`requests.w2.jsonl` for worker 2); `log_files` and `read_records`
find them all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from ..config import PACKAGE

DROPPED = Counter(
    f"{PACKAGE}_request_log_dropped",
    "Request log records dropped because the write buffer was full",
)
_STOP = object()
WRITE_BATCH = 1000  # records per write at most


def worker_path(path: str | Path, worker: int | None) -> Path:
    """The file one worker writes: the configured path for worker 1 (or no worker), else `<stem>.w<n>`."""
    path = Path(path)
    if not worker or worker == 1:
        return path
    return path.with_name(f"{path.stem}.w{worker}{path.suffix}")


class RequestLog:
    """A bounded, non-blocking JSON-lines sink with size-based rotation."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 10_000_000,
        backups: int = 5,
        buffer: int = 10_000,
        dropped: Any = DROPPED,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped = 0
        self._dropped_metric = dropped
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=buffer)
        self._handler = RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._chunk_bytes = max(1, max_bytes // 10)
        self._thread = threading.Thread(target=self._drain, name="request-log", daemon=True)
        self._thread.start()

    def submit(self, records: Iterable[dict[str, Any]]) -> int:
        """Queue records without ever waiting; returns how many were dropped (and counted): no room."""
        lost = 0
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                lost += 1
        if lost:
            self.dropped += lost
            self._dropped_metric.inc(lost)
        return lost

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
                lines = [line for record in records if record is not _STOP and (line := self._line(record))]
                for message in chunks(lines, self._chunk_bytes):
                    self._handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))
            except Exception:  # a failed write must not stop the thread: the records after it still count
                logging.getLogger(__name__).exception(
                    "request log: %d records could not be written", len(records)
                )
            finally:
                for _ in records:
                    self._queue.task_done()
            if stop:
                return

    @staticmethod
    def _line(record: Any) -> str | None:
        try:
            return json.dumps(record, default=str, separators=(",", ":"))
        except (TypeError, ValueError):  # one record that cannot be written must not lose the others
            logging.getLogger(__name__).exception("request log: a record could not be written")
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

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def chunks(lines: list[str], max_bytes: int) -> Iterator[str]:
    """The lines joined into messages of at most max_bytes characters (a longer line goes alone)."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > max_bytes:
            yield "\n".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        yield "\n".join(chunk)


def log_files(path: str | Path) -> list[Path]:
    """Every file of the log at `path`: all workers' files and their rotated backups, oldest first."""
    path = Path(path)
    pattern = re.compile(rf"^{re.escape(path.stem)}(\.w\d+)?{re.escape(path.suffix)}(\.(\d+))?$")
    found = [p for p in path.parent.glob(f"{path.stem}*") if pattern.match(p.name)]

    def age(p: Path) -> tuple[int, str]:
        # A higher backup number is older; the live file (no number) is the newest of its worker.
        match = pattern.match(p.name)
        return (-int(match.group(3)) if match and match.group(3) else 0, p.name)

    return sorted(found, key=age)


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records in every file of the log, skipping a last line that is still being written."""
    for file in log_files(path):
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                if line.endswith("\n"):
                    yield json.loads(line)
