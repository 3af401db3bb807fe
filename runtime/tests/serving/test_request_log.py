"""The request log sink: records written off the request path as immutable objects in hourly partitions of
the store, flushed by time or count; what a failing store refuses is kept and retried, what cannot be kept
is counted; a killed writer loses at most one flush, which the pending metric said beforehand. And 2.0.0's
rotating files, which are only read now."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from ml_lifecycle._internal.records import RequestRecord
from ml_lifecycle._internal.serving import request_log
from ml_lifecycle._internal.serving.request_log import (
    DROPPED,
    LogMetrics,
    ReadReport,
    RequestLog,
    read_records,
    read_store,
    replica_name,
)
from ml_lifecycle._internal.storage import Storage
from prometheus_client import CollectorRegistry

from ..conftest import PROJECT_SRC

T0 = datetime(2026, 1, 10, 12, tzinfo=UTC)
PREFIX = "my_ml_project_request_log"


def record(i: int, at: datetime = T0) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}",
        time=at + timedelta(seconds=i),
        row=0,
        features={"size": i * 0.5, "color": "red"},
        prediction=i % 2,
    )


class Metrics:
    """The writer's metrics on a registry of their own, so each test sees only its own counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.log_metrics = LogMetrics.create(self.registry)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"{PREFIX}_{name}", labels) or 0.0

    def dropped(self) -> dict[str, float]:
        return {
            c: self.value("dropped_total", cause=c) for c in ("buffer_full", "write_failed", "unserializable")
        }


def folder(tmp_path) -> Storage:
    return Storage((tmp_path / "store").as_uri())


def sink(store: Storage, metrics: Metrics, **options) -> RequestLog:
    options = {"replica": "a", "worker": 1, "flush_seconds": 3600, "flush_records": 1000} | options
    return RequestLog(store, metrics=metrics.log_metrics, **options)


def objects(store: Storage) -> list[str]:
    return [listed.key for listed in store.list("requests")]


def poll(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:g} s")
        time.sleep(0.02)
    return found


def test_records_are_written_as_json_lines_into_their_hour_partition(tmp_path):
    store, metrics = folder(tmp_path), Metrics()
    log = sink(store, metrics)
    late = record(1, T0 + timedelta(hours=1, minutes=5))
    assert log.submit([record(1), record(2), late]) == 0
    assert log.flush()
    keys = objects(store)
    assert [key.rsplit("/", 1)[0] for key in keys] == [
        "requests/date=2026-01-10/hour=12",
        "requests/date=2026-01-10/hour=13",
    ]
    assert all(key.rsplit("/", 1)[1].startswith("a-1-") and key.endswith(".jsonl") for key in keys)
    assert store.read_bytes(keys[0]).decode().splitlines() == [record(1).line(), record(2).line()]
    assert read_store(store, T0, T0 + timedelta(hours=2), ReadReport()) == [record(1), record(2), late]
    assert (metrics.value("written_total"), metrics.value("pending")) == (3, 0)
    log.close()


def test_the_writers_line_reads_back_as_an_equal_record_in_the_2_0_0_format(tmp_path):
    """What the service logs reads back unchanged (an id that looks like a number stays text, a class
    stays an int, the time keeps its zone), and the line is byte for byte the one 2.0.0 wrote."""
    classified = RequestRecord(
        request_id="00042",
        time=datetime(2026, 1, 10, 12, 0, 0, 123456, tzinfo=UTC),
        endpoint="/predict",
        model_version="my_ml_project:abc123",
        row=1,
        features={"size": 1.5, "weight": None, "color": "red"},
        prediction=1,
        probabilities={"0": 0.25, "1": 0.75},
    )
    regression = RequestRecord(
        request_id="r-7",
        time=datetime(2026, 1, 10, 14, 30, tzinfo=timezone(timedelta(hours=2))),  # 12:30 UTC
        endpoint="/predict_one",
        model_version="my_ml_project:abc123",
        features={"size": 2.0, "weight": 0.1, "color": "blue"},
        prediction=12.5,
    )
    store = folder(tmp_path)
    log = sink(store, Metrics())
    log.submit([classified, regression])
    log.close()
    [key] = objects(store)
    assert store.read_bytes(key).decode().splitlines()[0] == LINE_2_0_0
    read = read_store(store, T0, T0 + timedelta(hours=1), ReadReport())
    assert read == [classified, regression]
    assert isinstance(read[0].prediction, int) and read[1].time.utcoffset() == timedelta(hours=2)


LINE_2_0_0 = (
    '{"request_id":"00042","time":"2026-01-10T12:00:00.123456+00:00","endpoint":"/predict",'
    '"model_version":"my_ml_project:abc123","row":1,"features":{"size":1.5,"weight":null,"color":"red"},'
    '"prediction":1,"probabilities":{"0":0.25,"1":0.75}}'
)


def test_a_flush_is_due_after_flush_records_and_the_rest_is_pending(tmp_path):
    """The writer sleeps until flush_records are waiting (it is not woken per record, which took the GIL
    from the event loop mid-request), then writes them as one object; the rest waits, counted as pending."""
    store, metrics = folder(tmp_path), Metrics()
    log = sink(store, metrics, flush_records=100)
    log.submit(record(i) for i in range(99))
    assert (log.pending, metrics.value("pending")) == (99, 99)
    log.submit([record(99)])
    poll(lambda: metrics.value("written_total") == 100, what="a flush at 100 records")
    assert len(objects(store)) == 1  # the first 99 were not written on their own before
    log.submit(record(i) for i in range(100, 150))
    assert (len(objects(store)), log.pending, metrics.value("pending")) == (1, 50, 50)
    log.close()  # close writes the rest
    assert (metrics.value("written_total"), metrics.value("pending")) == (150, 0)


def test_a_flush_is_due_after_flush_seconds(tmp_path):
    store, metrics = folder(tmp_path), Metrics()
    log = sink(store, metrics, flush_seconds=0.2)
    log.submit([record(1)])
    # The writer counts a flush once its object is written: wait for the count, then see the one object.
    poll(lambda: metrics.value("written_total") == 1, what="a flush by time")
    assert len(objects(store)) == 1
    log.close()


def test_a_store_that_refuses_writes_keeps_the_records_and_they_are_written_once_it_accepts(
    s3_environ, caplog
):
    """A bucket that does not exist yet refuses every write: the records wait (pending says how many),
    nothing is dropped, the service log says why once; once the bucket is there, the retry writes them."""
    bucket = f"later-{uuid.uuid4().hex[:8]}"
    store, metrics = Storage(f"s3://{bucket}/p"), Metrics()
    with caplog.at_level(logging.ERROR, logger=request_log.__name__):
        log = sink(store, metrics, flush_seconds=0.05, flush_records=10)
        log.submit(record(i) for i in range(25))
        poll(lambda: "cannot write to" in caplog.text, what="the failure logged")
        assert not log.flush(timeout=5)  # still refused: the records are kept
    assert (log.pending, metrics.value("pending"), metrics.value("written_total")) == (25, 25, 0)
    assert sum(metrics.dropped().values()) == 0
    assert caplog.text.count("cannot write to") == 1 and "bucket does not exist" in caplog.text
    httpx.put(f"{s3_environ.endpoint}/{bucket}", timeout=10).raise_for_status()
    poll(lambda: metrics.value("written_total") == 25, timeout=30, what="the retry after the bucket exists")
    assert [r.request_id for r in read_store(store, T0, T0 + timedelta(hours=1), ReadReport())] == [
        f"r{i}" for i in range(25)
    ]
    log.close()


def test_a_store_failing_for_longer_than_the_buffer_drops_the_oldest_and_counts_them(s3_environ):
    store, metrics = Storage(f"s3://never-{uuid.uuid4().hex[:8]}/p"), Metrics()
    log = sink(store, metrics, flush_seconds=0.05, flush_records=10, buffer=50)
    log.submit(record(i) for i in range(40))
    poll(lambda: not log._queue, what="the first records taken by the writer")
    log.submit(record(i) for i in range(40, 80))
    poll(lambda: metrics.value("dropped_total", cause="write_failed") == 30, what="30 dropped")
    assert (log.pending, metrics.value("pending")) == (50, 50)  # the newest 50 are kept
    assert [r.request_id for r in log._pending][:1] == ["r30"]
    assert metrics.value("dropped_total", cause="buffer_full") == 0
    log.close(timeout=5)  # the store still refuses: what waited is lost, and counted
    assert metrics.value("dropped_total", cause="write_failed") == 80 and metrics.value("pending") == 0


class SlowStore(Storage):
    """A folder store whose writes wait until released: a store slower than the traffic."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writing, self.release = threading.Event(), threading.Event()

    def create(self, key: str, data: bytes) -> bool:
        self.writing.set()
        self.release.wait(20)
        return super().create(key, data)


def test_a_full_buffer_drops_records_and_counts_them_without_waiting(tmp_path):
    store, metrics = SlowStore((tmp_path / "store").as_uri()), Metrics()
    log = sink(store, metrics, buffer=3, flush_records=1)
    log.submit([record(0)])  # taken by the writer thread, which then waits on the store
    assert store.writing.wait(10)
    started = time.monotonic()
    assert log.submit([record(i) for i in range(1, 6)]) == 2  # three fit in the buffer, two do not
    assert time.monotonic() - started < 1
    assert log.dropped == 2 and metrics.dropped() == {
        "buffer_full": 2,
        "write_failed": 0,
        "unserializable": 0,
    }
    store.release.set()
    log.close()
    records = read_store(store, T0, T0 + timedelta(hours=1), ReadReport())
    assert [r.request_id for r in records] == ["r0", "r1", "r2", "r3"]


def test_the_metrics_are_on_the_default_registry_with_every_cause_from_the_start(tmp_path):
    from prometheus_client import REGISTRY

    assert DROPPED is request_log.METRICS.dropped
    for cause in ("buffer_full", "write_failed", "unserializable"):
        assert REGISTRY.get_sample_value(f"{PREFIX}_dropped_total", {"cause": cause}) is not None
    before = REGISTRY.get_sample_value(f"{PREFIX}_written_total") or 0
    log = RequestLog(folder(tmp_path), replica="a", flush_seconds=3600)
    log.submit([record(1), record(2)])
    assert REGISTRY.get_sample_value(f"{PREFIX}_pending") >= 2
    log.close()
    assert REGISTRY.get_sample_value(f"{PREFIX}_written_total") == before + 2


@pytest.mark.parametrize("value", [float("nan"), {"nested": [1, 2]}, None])
def test_unusual_values_do_not_stop_the_writer(tmp_path, value):
    store = folder(tmp_path)
    log = sink(store, Metrics())
    odd = RequestRecord(request_id="odd", time=T0, features={"size": value}, prediction=None)
    log.submit([odd, record(1)])
    log.close()
    assert [r.request_id for r in read_store(store, T0, T0 + timedelta(hours=1), ReadReport())] == [
        "odd",
        "r1",
    ]


def test_close_writes_what_is_queued_and_the_writer_then_says_it_stopped(tmp_path):
    store = folder(tmp_path)
    log = sink(store, Metrics())
    log.submit(record(i) for i in range(500))
    assert log.problem() is None
    log.close()
    assert "has stopped" in log.problem()
    assert len(read_store(store, T0, T0 + timedelta(hours=1), ReadReport())) == 500


def test_partitions_older_than_the_retention_are_deleted_by_the_writer(tmp_path):
    store, now = folder(tmp_path), datetime.now(UTC)
    old = sink(store, Metrics(), retention_hours=1e6)  # writes without pruning what it writes
    old.submit([record(0, now - timedelta(hours=30)), record(0, now - timedelta(hours=3)), record(0, now)])
    old.close()
    assert len(objects(store)) == 3
    assert request_log.prune(store, now - timedelta(hours=2)) == 2  # their hours ended over 2 h ago
    [kept] = objects(store)
    assert kept.startswith(request_log.partition(now))
    store.write("requests/date=2020-01-01/hour=00/foreign.txt", b"an object past the retention")
    RequestLog(store, replica="b", retention_hours=2).close()  # a writer prunes when it starts
    assert objects(store) == [kept]


def test_the_replica_is_the_setting_else_the_host_name():
    assert replica_name("web-1") == "web-1"
    assert replica_name("") == replica_name(socket.gethostname()) != ""
    assert replica_name("host/with spaces") == "host_with_spaces"


KILLED_WRITER = """
import json, sys, time
sys.path.insert(0, {src!r})
import my_ml_project
from datetime import UTC, datetime
from ml_lifecycle._internal.records import RequestRecord
from ml_lifecycle._internal.serving.request_log import METRICS, RequestLog
from ml_lifecycle._internal.storage import Storage
from prometheus_client import REGISTRY

log = RequestLog(Storage({url!r}), replica="killed", flush_seconds=3600, flush_records=100)
now = datetime.now(UTC)
def served(ids):
    return [RequestRecord(request_id=f"k{{i}}", time=now, features={{"x": i}}, prediction=0) for i in ids]

log.submit(served(range(200)))
while log.written < 200:  # two flushes of 100 (or one of 200)
    time.sleep(0.01)
log.submit(served(range(200, 250)))
while log.pending < 50:  # waiting for the next flush
    time.sleep(0.01)
pending = REGISTRY.get_sample_value("my_ml_project_request_log_pending")
print(json.dumps({{"written": log.written, "pending": pending}}), flush=True)
time.sleep(600)  # until killed
"""


def test_a_killed_writer_loses_at_most_one_flush_and_the_pending_metric_said_how_many(tmp_path):
    store = folder(tmp_path)
    script = KILLED_WRITER.format(src=str(PROJECT_SRC), url=store.url)
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        said = json.loads(process.stdout.readline())
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    now = datetime.now(UTC)
    kept = read_store(store, now - timedelta(hours=1), now + timedelta(minutes=1), ReadReport())
    assert said == {"written": 200, "pending": 50.0}
    assert len(kept) == 200 and 250 - len(kept) == said["pending"] <= 100  # at most one flush lost


# Release 2.0.0's rotating files: nothing writes them now, the window still reads them until they age out.


def test_a_torn_line_is_skipped_counted_and_named_and_the_rest_is_read(tmp_path, caplog):
    path = tmp_path / "requests.jsonl"
    torn = record(2).line()[:25]  # a kill or a full disk in the middle of a write
    lines = [record(1).line(), torn + record(3).line(), "[1, 2]", record(4).line()]
    path.write_text("\n".join(lines) + "\n")
    report = ReadReport()
    with caplog.at_level(logging.WARNING):
        assert [r.request_id for r in read_records(path, report)] == ["r1", "r4"]
    assert [(bad.file, bad.line) for bad in report.bad_lines] == [(str(path), 2), (str(path), 3)]
    assert "not JSON" in report.bad_lines[0].reason and "not a JSON object" in report.bad_lines[1].reason
    assert f"{path}:2" in caplog.text and f"{path}:3" in caplog.text
    assert report.summary().startswith("2 unreadable lines skipped")


def test_records_without_the_required_keys_are_bad_lines(tmp_path):
    path = tmp_path / "requests.jsonl"
    good = json.loads(record(1).line()) | {"time": "2026-01-10T12:00:00+00:00"}
    timeless = {k: v for k, v in json.loads(record(3).line()).items() if k not in ("time", "features")}
    naive = json.loads(record(2).line()) | {"time": "2026-01-10T12:00:00"}
    number = json.loads(record(4).line()) | {"time": 1768046400}
    path.write_text("\n".join(json.dumps(r) for r in [good, timeless, naive, number]) + "\n")
    report = ReadReport()
    kept = list(read_records(path, report))
    assert [r.request_id for r in kept] == ["r1"]
    assert [(bad.line, bad.reason) for bad in report.bad_lines] == [
        (2, "no time, features"),
        (3, "time '2026-01-10T12:00:00' has no time zone"),
        (4, "time 1768046400 is not an ISO time"),
    ]
    assert report.oldest == {"requests.jsonl": datetime.fromisoformat(good["time"])}


def test_each_workers_file_and_its_rotated_files_are_read(tmp_path):
    base = tmp_path / "requests.jsonl"
    (tmp_path / "requests.jsonl.1").write_text(record(0).line() + "\n")
    base.write_text(record(1).line() + "\n")
    (tmp_path / "requests.w2.jsonl").write_text(record(2).line() + "\n")
    (tmp_path / "requests-other.txt").write_text("not part of the log\n")
    report = ReadReport()
    assert sorted(r.request_id for r in read_records(base, report)) == ["r0", "r1", "r2"]
    assert report.backups == {"requests.jsonl": 1}


def test_a_line_still_being_written_is_skipped(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(record(1).line() + "\n" + '{"request_id": "r2", "fea')
    assert [r.request_id for r in read_records(path)] == ["r1"]
