"""The request log sink: written off the request path, rotated by size and kept by age, drops counted when
full; torn lines skipped and named by the reader, and never glued onto by the writer."""

import errno
import json
import logging
import os
import queue
import re
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from ml_lifecycle._internal.records import RequestRecord
from ml_lifecycle._internal.serving.request_log import (
    DROPPED,
    ReadReport,
    RequestLog,
    log_files,
    read_records,
    worker_path,
)


class Tally:
    """Stands in for the Prometheus counter, so each test sees only its own drops (by cause)."""

    def __init__(self):
        self.by_cause = {}

    def labels(self, cause):
        self.by_cause.setdefault(cause, 0)
        return _Cause(self, cause)

    @property
    def value(self):
        return sum(self.by_cause.values())


class _Cause:
    def __init__(self, tally, cause):
        self.tally, self.cause = tally, cause

    def inc(self, amount=1):
        self.tally.by_cause[self.cause] += amount


T0 = datetime(2026, 1, 10, 12, tzinfo=UTC)


def record(i: int) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}",
        time=T0 + timedelta(seconds=i),
        row=0,
        features={"size": i * 0.5, "color": "red"},
        prediction=i % 2,
    )


def test_records_are_written_as_json_lines(tmp_path):
    sink = RequestLog(tmp_path / "logs" / "requests.jsonl", dropped=Tally())
    assert sink.submit([record(1), record(2)]) == 0
    sink.close()
    lines = (tmp_path / "logs" / "requests.jsonl").read_text().splitlines()
    assert lines == [record(1).line(), record(2).line()]
    assert list(read_records(tmp_path / "logs" / "requests.jsonl")) == [record(1), record(2)]


# A line as release 2.0.0 wrote it (a dict literal through json.dumps), before the record had a type.
LINE_2_0_0 = (
    '{"request_id":"00042","time":"2026-01-10T12:00:00.123456+00:00","endpoint":"/predict",'
    '"model_version":"my_ml_project:abc123","row":1,"features":{"size":1.5,"weight":null,"color":"red"},'
    '"prediction":1,"probabilities":{"0":0.25,"1":0.75}}'
)


def test_the_writers_line_reads_back_as_an_equal_record_in_the_2_0_0_format(tmp_path):
    """What the service logs reads back unchanged (an id that looks like a number stays text, a class
    stays an int, the time keeps its zone), and the line is byte for byte the one 2.0.0 wrote, so logs
    written before the record had a type still read."""
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
        time=datetime(2026, 1, 10, 14, 30, tzinfo=timezone(timedelta(hours=2))),
        endpoint="/predict_one",
        model_version="my_ml_project:abc123",
        features={"size": 2.0, "weight": 0.1, "color": "blue"},
        prediction=12.5,
    )
    path = tmp_path / "requests.jsonl"
    sink = RequestLog(path, dropped=Tally())
    sink.submit([classified, regression])
    sink.close()
    assert path.read_text().splitlines()[0] == LINE_2_0_0
    read = list(read_records(path))
    assert read == [classified, regression]
    assert isinstance(read[0].prediction, int) and read[1].time.utcoffset() == timedelta(hours=2)


def test_the_file_rotates_by_size_and_backups_is_the_ceiling(tmp_path):
    path = tmp_path / "requests.jsonl"
    sink = RequestLog(path, max_bytes=2000, backups=2, retention_hours=24, dropped=Tally())
    for i in range(200):
        sink.submit([record(i)])
    sink.close()
    files = log_files(path)
    assert [f.name for f in files] == ["requests.jsonl.2", "requests.jsonl.1", "requests.jsonl"]
    assert all(f.stat().st_size <= 2000 for f in files)
    kept = list(read_records(path))
    # The oldest records went with the deleted backups; what is kept is the newest, in order, whole.
    assert [r.request_id for r in kept] == [f"r{i}" for i in range(200 - len(kept), 200)]


def test_rotated_files_are_kept_until_older_than_the_retention(tmp_path):
    """Retention follows time: at any traffic every file younger than the retention stays (backups is
    only a ceiling), and a file whose newest record is older goes at the next rotation."""
    path = tmp_path / "requests.jsonl"
    sink = RequestLog(path, max_bytes=2000, backups=1000, retention_hours=1, dropped=Tally())
    sink.submit(record(i) for i in range(300))
    sink.flush()
    backups = [f for f in log_files(path) if f.name != path.name]
    assert len(backups) > 5  # far more than the old fixed count of 5 would have kept
    assert [r.request_id for r in read_records(path)] == [f"r{i}" for i in range(300)]

    two_hours_ago = time.time() - 2 * 3600
    for file in backups[:3]:  # the oldest three: their newest record is now two hours old
        os.utime(file, (two_hours_ago, two_hours_ago))
    first_young = json.loads(backups[3].read_text().splitlines()[0])["request_id"]
    sink.submit(record(i) for i in range(300, 330))  # enough for another rotation
    sink.close()
    kept = [r.request_id for r in read_records(path)]
    # The old files went, every younger one stayed: the log runs whole from the first young record on.
    assert kept == [f"r{i}" for i in range(int(first_young[1:]), 330)]


def test_a_torn_line_is_skipped_counted_and_named_and_the_rest_is_read(tmp_path, caplog):
    path = tmp_path / "requests.jsonl"
    torn = record(2).line()[:25]  # a kill or a full disk in the middle of a write
    lines = [record(1).line(), torn + record(3).line(), "[1, 2]", record(4).line()]
    path.write_text("\n".join(lines) + "\n")
    report = ReadReport()
    with caplog.at_level(logging.WARNING):
        assert [r.request_id for r in read_records(path, report)] == ["r1", "r4"]
    assert [(bad.file, bad.line) for bad in report.bad_lines] == [(path, 2), (path, 3)]
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


def test_after_a_restart_the_next_record_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(record(1).line() + "\n" + record(2).line()[:30])  # the writer was killed
    sink = RequestLog(path, dropped=Tally())
    sink.submit([record(3)])
    sink.close()
    report = ReadReport()
    assert [r.request_id for r in read_records(path, report)] == ["r1", "r3"]
    assert [bad.line for bad in report.bad_lines] == [2]


def test_a_failed_write_counts_its_records_as_dropped_and_the_next_starts_a_fresh_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    tally = Tally()
    sink = RequestLog(path, dropped=tally)
    sink.submit([record(1)])
    sink.flush()
    handler = sink._handler
    real_open = handler._open

    class FullDisk:
        """The log file, but a write puts only its first bytes on disk and then fails as a full disk does."""

        def __init__(self):
            self.file = real_open()

        def __getattr__(self, name):
            return getattr(self.file, name)

        def write(self, text):
            self.file.write(text[:20])
            self.file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    handler.close()  # the next write opens the file again, through the failing stream
    handler._open = FullDisk
    sink.submit([record(2), record(3)])
    sink.flush()
    assert (sink.dropped, tally.by_cause["write_failed"]) == (2, 2)  # not in the log: counted by cause
    handler._open = real_open  # space again
    sink.submit([record(4)])
    sink.close()
    report = ReadReport()
    assert [r.request_id for r in read_records(path, report)] == ["r1", "r4"]
    assert len(report.bad_lines) == 1  # the fragment, on a line of its own


def test_a_log_that_cannot_be_written_says_why_once_counts_by_cause_and_recovers_on_its_own(tmp_path, caplog):
    path = tmp_path / "logs" / "requests.jsonl"
    path.mkdir(parents=True)  # the file's place is taken: it cannot be written, whoever runs the test
    tally = Tally()
    with caplog.at_level(logging.INFO, logger="ml_lifecycle._internal.serving.request_log"):
        sink = RequestLog(path, dropped=tally)
        assert str(path) in sink.problem() and "IsADirectoryError" in sink.problem()
        for i in range(20):  # one request after the other
            sink.submit([record(i)])
            sink.flush()
        assert tally.by_cause == {"buffer_full": 0, "write_failed": 20, "unserializable": 0}
        assert "20 records dropped" in sink.problem()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # said once, in one line
        assert str(path) in errors[0].getMessage() and errors[0].exc_info is None
        path.rmdir()  # someone fixes it; no traffic comes to a service that is not ready, only probes
        sink.problem()  # a readiness probe asks the writer to try again
        sink.flush()
        assert sink.problem() is None
        sink.submit([record(99)])
        sink.close()
    assert [r.request_id for r in read_records(path)] == ["r99"]
    assert "writing to" in caplog.text and "20 records were dropped" in caplog.text


def test_a_write_failure_that_goes_on_is_logged_again_with_the_records_lost_meanwhile(
    tmp_path, caplog, monkeypatch
):
    from ml_lifecycle._internal.serving import request_log

    monkeypatch.setattr(request_log, "REPEAT_SECONDS", 0.0)  # every failure is "a while later"
    path = tmp_path / "requests.jsonl"
    path.mkdir()
    with caplog.at_level(logging.ERROR, logger="ml_lifecycle._internal.serving.request_log"):
        sink = RequestLog(path, dropped=Tally())
        for size in (2, 3):
            sink.submit([record(i) for i in range(size)])
            sink.flush()
        sink.close()
    first, *again = [r.getMessage() for r in caplog.records]
    assert "cannot write" in first and again
    lost = [int(re.search(r"(\d+) records dropped", message).group(1)) for message in again]
    assert sum(lost) == 5, again  # each record counted once, in the message after it was lost


def test_a_full_buffer_drops_records_and_counts_them_without_waiting(tmp_path):
    tally = Tally()
    sink = RequestLog(tmp_path / "requests.jsonl", buffer=3, dropped=tally)
    writing, release = threading.Event(), threading.Event()
    handle = sink._handler.handle

    def slow_disk(log_record):
        writing.set()
        release.wait(10)
        return handle(log_record)

    sink._handler.handle = slow_disk
    sink.submit([record(0)])  # taken by the writer thread, which then blocks on the "disk"
    assert writing.wait(10)
    assert sink.submit([record(i) for i in range(1, 6)]) == 2  # three fit in the buffer, two do not
    assert (sink.dropped, tally.by_cause) == (2, {"buffer_full": 2, "write_failed": 0, "unserializable": 0})
    release.set()
    sink.close()
    assert [r.request_id for r in read_records(tmp_path / "requests.jsonl")] == ["r0", "r1", "r2", "r3"]


def test_drops_are_counted_in_the_prometheus_counter_by_default(tmp_path):
    from prometheus_client import REGISTRY

    name = "my_ml_project_request_log_dropped_total"
    before = REGISTRY.get_sample_value(name, {"cause": "buffer_full"}) or 0
    sink = RequestLog(tmp_path / "requests.jsonl")
    sink._queue.put_nowait = _always_full  # a buffer that is always full
    assert sink.submit([record(1), record(2)]) == 2
    assert REGISTRY.get_sample_value(name, {"cause": "buffer_full"}) == before + 2
    assert REGISTRY.get_sample_value(name, {"cause": "write_failed"}) is not None  # shown from the start
    assert DROPPED is sink._dropped_metric
    sink.close()


def _always_full(*args, **kwargs):
    raise queue.Full


def test_each_worker_writes_its_own_file_and_all_are_read(tmp_path):
    base = tmp_path / "requests.jsonl"
    assert worker_path(base, None) == base and worker_path(base, 1) == base
    assert worker_path(base, 2) == tmp_path / "requests.w2.jsonl"
    for worker in (1, 2):
        sink = RequestLog(worker_path(base, worker), dropped=Tally())
        sink.submit([record(worker)])
        sink.close()
    (tmp_path / "requests-other.txt").write_text("not part of the log\n")
    assert sorted(r.request_id for r in read_records(base)) == ["r1", "r2"]


def test_a_line_still_being_written_is_skipped(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(record(1).line() + "\n" + '{"request_id": "r2", "fea')
    assert [r.request_id for r in read_records(path)] == ["r1"]


def test_close_writes_what_is_queued(tmp_path):
    sink = RequestLog(tmp_path / "requests.jsonl", dropped=Tally())
    sink.submit([record(i) for i in range(500)])
    sink.close()
    assert "has stopped" in sink.problem()
    assert len(list(read_records(tmp_path / "requests.jsonl"))) == 500


@pytest.mark.parametrize("value", [float("nan"), {"nested": [1, 2]}, None])
def test_unusual_values_do_not_stop_the_writer(tmp_path, value):
    sink = RequestLog(tmp_path / "requests.jsonl", dropped=Tally())
    odd = RequestRecord(request_id="odd", time=T0, features={"size": value}, prediction=None)
    sink.submit([odd, record(1)])
    sink.close()
    assert [r.request_id for r in read_records(tmp_path / "requests.jsonl")] == ["odd", "r1"]


def test_a_rotation_while_the_log_is_being_read_loses_and_repeats_no_record(tmp_path, monkeypatch):
    """The monitor lists the files, the service rotates, the monitor opens them: under load a monitor run
    failed on the live file gone (or would read a renamed file twice). The files are read as one snapshot."""
    from ml_lifecycle._internal.serving import request_log

    path = tmp_path / "requests.jsonl"
    sink = RequestLog(path, max_bytes=2_000, backups=50)
    sink.submit(record(i) for i in range(60))
    sink.flush()
    listed, rotations = request_log.log_files, []

    def rotated_after_listing(log):
        files = listed(log)
        if not rotations:  # once: the service's own rollover, between the listing and the opening
            rotations.append(files)
            sink._handler.doRollover()
        return files

    monkeypatch.setattr(request_log, "log_files", rotated_after_listing)
    ids = [r.request_id for r in read_records(path)]
    sink.close()
    assert len(rotations[0]) > 1, "the log had not rotated before: the test shows nothing"
    assert ids == [f"r{i}" for i in range(60)]
