"""What the monitor reads of the served traffic: a window of the request log, and labels that come later."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from ml_lifecycle._internal.monitoring import labels as label_table
from ml_lifecycle._internal.monitoring.served_traffic import performance, read_labels, read_window
from ml_lifecycle._internal.records import RequestRecord
from ml_lifecycle._internal.serving.request_log import RequestLog, partition
from ml_lifecycle._internal.storage import Storage
from ml_lifecycle._internal.tables import DataError

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)


def served(
    request_id: str, minutes_ago: float, prediction, probabilities=None, row: int = 0
) -> RequestRecord:
    """One request log record, as the service writes it."""
    return RequestRecord(
        request_id=request_id,
        time=NOW - timedelta(minutes=minutes_ago),
        endpoint="/predict_one",
        model_version="model:v1",
        row=row,
        features={"size": 1.0 + minutes_ago, "color": "red"},
        prediction=prediction,
        probabilities=probabilities,
    )


def folder(tmp_path) -> Storage:
    return Storage((tmp_path / "store").as_uri())


def write_log(store: Storage, records, replica: str = "a") -> None:
    """The records as one replica's service writes them (kept whatever their age)."""
    sink = RequestLog(store, replica=replica, retention_hours=1e6)
    sink.submit(records)
    sink.close()


def test_the_window_holds_only_the_requests_served_in_it(tmp_path):
    log = folder(tmp_path)
    write_log(log, [served("old", 90, 1), served("a", 30, 0), served("b", 10, 1), served("future", -5, 1)])
    window = read_window(log, NOW - timedelta(hours=1), NOW)
    assert list(window.request_ids) == ["a", "b"]
    assert list(window.features.columns) == ["size", "color"]
    assert list(window.predictions) == [0, 1]
    assert len(read_window(log, NOW - timedelta(minutes=5), NOW)) == 0


def test_a_line_that_is_no_record_is_skipped_and_named_and_the_window_still_read(tmp_path):
    log = folder(tmp_path)
    write_log(log, [served("a", 30, 0), served("b", 10, 1)])
    key = f"{partition(NOW - timedelta(minutes=20))}/foreign.jsonl"  # edited by hand, or not ours
    log.write(key, (served("torn", 20, 1).line()[:40] + "\n").encode())
    window = read_window(log, NOW - timedelta(hours=1), NOW)
    assert list(window.request_ids) == ["a", "b"]
    assert [(bad.file, bad.line) for bad in window.bad_lines] == [(log.url_of(key), 1)]


def test_the_2_0_0_file_log_is_read_beside_the_store_until_it_ages_out(tmp_path, settings, monkeypatch):
    """After an upgrade the window still holds what 2.0.0 logged to its rotating files (a torn line there
    skipped and named), merged with the store's records by time."""
    legacy = tmp_path / "requests.jsonl"
    legacy.write_text(served("old-a", 50, 0).line() + "\n" + served("torn", 45, 1).line()[:40] + "\n")
    (tmp_path / "requests.jsonl.1").write_text(served("old-b", 55, 1).line() + "\n")
    monkeypatch.setenv("MY_ML_PROJECT_SERVING__REQUEST_LOG_PATH", str(legacy))
    monkeypatch.setenv("MY_ML_PROJECT_STORAGE__URL", str(tmp_path / "store"))
    from ml_lifecycle._internal.config import get_settings

    get_settings.cache_clear()
    write_log(folder(tmp_path), [served("new", 10, 1)])
    window = read_window(get_settings(), NOW - timedelta(hours=1), NOW)
    assert list(window.request_ids) == ["old-b", "old-a", "new"]
    assert [(bad.file, bad.line) for bad in window.bad_lines] == [(str(legacy), 2)]
    assert window.oldest_record == NOW - timedelta(minutes=55)
    get_settings.cache_clear()


def test_the_window_says_how_much_of_the_requested_time_the_log_covers(tmp_path):
    log = folder(tmp_path)
    write_log(log, [served("a", 192, 0), served("b", 60, 1)])  # the log reaches back 3.2 h
    window = read_window(log, NOW - timedelta(hours=24), NOW)
    assert window.complete is False
    assert window.requested_hours == 24 and window.covered_hours == pytest.approx(3.2)
    assert window.coverage() == "covers 3.2 h of the requested 24 h (oldest record 2026-01-10 08:48 UTC)"
    assert "covers 3.2 h of the requested 24 h" in window.describe()

    whole = read_window(log, NOW - timedelta(hours=2), NOW)
    assert whole.complete is True and whole.covered_hours == 2
    assert "covers" not in whole.describe()
    just_before = read_window(log, NOW - timedelta(minutes=192.5), NOW)  # opened just before the traffic
    assert just_before.complete is True
    empty = read_window(Storage((tmp_path / "empty").as_uri()), NOW - timedelta(hours=24), NOW)
    assert empty.complete is False and empty.covered_hours == 0
    assert empty.coverage() == "covers 0.0 h of the requested 24 h (empty)"


class ListingStore(Storage):
    """A store that notes the prefixes it is asked to list, to show which partitions a read touched."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.listed: list[str] = []

    def list(self, prefix: str):
        self.listed.append(prefix)
        return super().list(prefix)


@pytest.fixture(params=["folder", "s3"])
def shared_store(request, tmp_path):
    """One store two replicas share: a folder, or a bucket on the S3 server."""
    if request.param == "folder":
        return (tmp_path / "store").as_uri()
    server = request.getfixturevalue("s3_environ")
    return f"s3://{server.bucket()}/team/project"


def test_two_replicas_in_one_store_are_one_window_read_from_the_hours_in_it(shared_store):
    """Two replicas write into one store; the window holds both, oldest first, and lists only its hours:
    an unreadable object an hour before it, and a whole day after it, are never read."""
    store = ListingStore(shared_store)
    write_log(store, [served("a1", 150, 0), served("a2", 50, 1), served("a3", 5, 0)], replica="web-a")
    write_log(store, [served("b1", 100, 1), served("b2", 30, 0), served("b3", 240, 1)], replica="web-b")
    store.write(f"{partition(NOW - timedelta(hours=4))}/foreign.jsonl", b"not a record\n")
    write_log(store, [served("tomorrow", -24 * 60, 1)], replica="web-b")
    window = read_window(store, NOW - timedelta(hours=3), NOW)
    assert list(window.request_ids) == ["a1", "b1", "a2", "b2", "a3"]
    assert window.bad_lines == () and window.complete  # an older partition exists: the log reaches back
    keys = [listed.key for listed in store.list("requests") if not listed.key.endswith("foreign.jsonl")]
    assert {key.rsplit("/", 1)[1].rsplit("-", 1)[0] for key in keys} == {"web-a-1", "web-b-1"}
    store.listed.clear()
    read_window(store, NOW - timedelta(hours=3), NOW)
    assert store.listed == [
        "requests/date=2026-01-10/hour=09",
        "requests/date=2026-01-10/hour=10",
        "requests/date=2026-01-10/hour=11",
    ]


def test_a_window_of_whole_days_lists_each_day_once():
    from ml_lifecycle._internal.serving.request_log import window_prefixes

    start = datetime(2026, 1, 8, 22, tzinfo=UTC)
    assert window_prefixes(start, datetime(2026, 1, 10, 1, 30, tzinfo=UTC)) == [
        "requests/date=2026-01-08/hour=22",
        "requests/date=2026-01-08/hour=23",
        "requests/date=2026-01-09",
        "requests/date=2026-01-10/hour=00",
        "requests/date=2026-01-10/hour=01",
    ]


def classified_window(tmp_path):
    """Four binary predictions whose probabilities rank the true classes perfectly (ROC AUC 1)."""
    log = folder(tmp_path)
    proba = [{"0": 0.9, "1": 0.1}, {"0": 0.7, "1": 0.3}, {"0": 0.4, "1": 0.6}, {"0": 0.2, "1": 0.8}]
    write_log(log, [served(f"r{i}", 40 - i, int(p["1"] > 0.5), p) for i, p in enumerate(proba)])
    return read_window(log, NOW - timedelta(hours=1), NOW)


def labels_file(tmp_path, rows: dict[str, int], name: str = "labels.csv"):
    path = tmp_path / name
    pd.DataFrame({"Request ID": list(rows), "label": list(rows.values())}).to_csv(path, index=False)
    return path


def test_labels_joined_on_request_id_give_the_gates_metric(tmp_path):
    window = classified_window(tmp_path)
    labels = read_labels(labels_file(tmp_path, {"r0": 0, "r1": 0, "r2": 1, "r3": 1, "unknown": 1}), "label")
    good = performance(window, labels, "classification", ["0", "1"], threshold=0.8)
    assert good["metric"] == "roc_auc"
    assert good["value"] == pytest.approx(1.0)
    assert good["n_labelled"] == 4
    assert good["below_threshold"] is False

    flipped = read_labels(labels_file(tmp_path, {"r0": 1, "r1": 1, "r2": 0, "r3": 0}, "flipped.csv"), "label")
    bad = performance(window, flipped, "classification", ["0", "1"], threshold=0.8)
    assert bad["value"] == pytest.approx(0.0)
    assert bad["below_threshold"] is True


def test_one_class_among_the_labels_is_reported_not_failed(tmp_path):
    window = classified_window(tmp_path)
    labels = read_labels(labels_file(tmp_path, {"r0": 1, "r1": 1}), "label")
    result = performance(window, labels, "classification", ["0", "1"], threshold=0.8)
    assert result["value"] is None and "one class" in result["note"]
    assert result["below_threshold"] is False


def test_regression_performance_is_rmse_and_a_higher_one_is_worse(tmp_path):
    log = folder(tmp_path)
    write_log(log, [served("a", 20, 1.0), served("b", 10, 3.0)])
    window = read_window(log, NOW - timedelta(hours=1), NOW)
    labels = read_labels(labels_file(tmp_path, {"a": 2, "b": 5}), "label")
    result = performance(window, labels, "regression", None, threshold=1.0)
    assert result["metric"] == "rmse"
    assert result["value"] == pytest.approx(((1 + 4) / 2) ** 0.5)
    assert result["below_threshold"] is True


def test_a_label_that_is_no_class_of_the_model_is_skipped_and_counted(tmp_path):
    window = classified_window(tmp_path)
    labels = read_labels(labels_file(tmp_path, {"r0": 0.0, "r1": "maybe", "r2": 1.0, "r3": 1}), "label")
    result = performance(window, labels, "classification", ["0", "1"], threshold=0.0)
    assert result["value"] == 1.0  # r0, r2, r3 still rank perfectly; 0.0 and 1.0 are the classes 0 and 1
    assert result["note"] == "1 label(s) skipped: not a class of the model (['maybe'])"


def test_a_regression_label_that_is_not_a_number_is_skipped_and_counted(tmp_path):
    log = folder(tmp_path)
    write_log(log, [served("a", 20, 1.0), served("b", 10, 3.0)])
    window = read_window(log, NOW - timedelta(hours=1), NOW)
    labels = read_labels(labels_file(tmp_path, {"a": 2, "b": "n/a (pending)"}), "label")
    result = performance(window, labels, "regression", None, threshold=1.0)
    assert result["value"] == pytest.approx(1.0)
    assert result["note"] == "1 label(s) skipped: not a number"


def test_no_labels_file_means_no_performance_and_a_bad_one_is_named(tmp_path):
    assert read_labels(tmp_path / "absent.csv", "label") is None
    path = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["a"], "label": [1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="request_id"):
        read_labels(path, "label")


def test_malformed_labels_are_skipped_and_counted_by_cause_and_the_rest_still_score(tmp_path):
    """A blank, text or huge row, no id, no target, a line with a field too many: each skipped and
    counted, never a crash; a later label for the same request row wins, the earlier one is counted."""
    window = classified_window(tmp_path)
    path = tmp_path / "labels.csv"
    path.write_text(
        "request_id,row,label\n"
        "r0,0,1\n"  # superseded by the correction below
        "r1,,1\n"  # blank row
        "r1,first,1\n"  # text row
        "r1,1e30,1\n"  # a row no request has
        "r1,-1,1\n"
        ",0,1\n"  # no request id
        "r1,0,\n"  # no target
        "r1,0,1,extra\n"
        "r0,0,0\nr1,0,0\nr2,0.0,1\nr3,0,1\nolder,0,1\n"
    )
    labels, report = label_table.read(path, "label")
    assert report.read == 13
    assert dict(report.skipped) == {
        label_table.ROW_BLANK: 1,
        label_table.ROW_NOT_INTEGER: 1,
        label_table.ROW_OUT_OF_RANGE: 2,
        label_table.NO_REQUEST_ID: 1,
        label_table.NO_TARGET: 1,
        label_table.EXTRA_FIELDS: 1,
        label_table.SUPERSEDED: 1,
    }
    labels, report = label_table.served_only(labels, window, report)
    assert report.skipped[label_table.NOT_SERVED] == 1  # "older": a request outside the window
    assert report.read - report.total_skipped == len(labels) == 4
    assert "| row is blank | 1 |" in report.markdown()
    assert report.warnings() == [report.summary()] and "1 row is blank" in report.summary()
    result = performance(window, labels, "classification", ["0", "1"], threshold=0.0)
    assert result["value"] == pytest.approx(1.0) and result["n_labelled"] == 4
    # The watch's reader: the same usable labels, no crash
    assert read_labels(path, "label").equals(label_table.read(path, "label")[0])


def test_a_regression_target_that_is_not_a_number_is_counted_by_the_reader(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label\na,2.5\nb,n/a (pending)\nc,inf\nd,\n")
    labels, report = label_table.read(path, "label", "regression")
    assert list(labels["label"]) == [2.5]
    assert dict(report.skipped) == {label_table.NOT_A_NUMBER: 2, label_table.NO_TARGET: 1}


def test_request_ids_that_look_like_numbers_are_compared_as_text(tmp_path):
    """An X-Request-ID of 00042 is logged as "00042"; its label must match it, not 42.0."""
    log = folder(tmp_path)
    proba = [{"0": 0.8, "1": 0.2}, {"0": 0.3, "1": 0.7}, {"0": 0.6, "1": 0.4}]
    write_log(
        log,
        [
            served(rid, 30 - i, 0, p)
            for i, (rid, p) in enumerate(zip(["00042", "7", "42"], proba, strict=True))
        ],
    )
    window = read_window(log, NOW - timedelta(hours=1), NOW)
    assert list(window.request_ids) == ["00042", "7", "42"]
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,label\n00042,0,0\n7,0,1\n")
    labels = read_labels(path, "label")
    assert list(labels["request_id"]) == ["00042", "7"]
    result = performance(window, labels, "classification", ["0", "1"], threshold=0.0)
    assert result["n_labelled"] == 2 and result["value"] == pytest.approx(1.0)


def test_parquet_labels_are_read_by_the_same_rules(tmp_path):
    path = tmp_path / "labels.parquet"
    table = {"Request ID": ["00042", "b", "c"], "row": [0.0, None, 1.0], "label": ["1", "0", None]}
    pd.DataFrame(table).to_parquet(path)
    labels, report = label_table.read(path, "label")
    assert list(labels["request_id"]) == ["00042"] and list(labels["row"]) == [0]
    assert dict(report.skipped) == {label_table.ROW_BLANK: 1, label_table.NO_TARGET: 1}


def test_a_last_line_still_being_written_is_left_for_the_next_read(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,label\nr0,0,1\nr1,")  # the writer is in the middle of r1's line
    labels, report = label_table.read(path, "label")
    assert list(labels["request_id"]) == ["r0"]
    assert report.pending_line and not report.skipped and report.warnings() == []
    with path.open("a") as file:
        file.write("0,0\n")
    labels, report = label_table.read(path, "label")
    assert list(labels["request_id"]) == ["r0", "r1"] and not report.pending_line


WRITER = """
import sys
path, lines = sys.argv[1], int(sys.argv[2])
with open(path, "a", encoding="utf-8") as file:
    for i in range(lines):
        line = f"req-{i},{i % 3},{i % 2}\\n"
        cut = 1 + i % (len(line) - 1)  # each line in two writes, cut at every place in turn
        file.write(line[:cut])
        file.flush()
        if i % 5 == 0:  # mid-line: tell the reader, and go on when it has read
            print(i, flush=True)
            sys.stdin.readline()
        file.write(line[cut:])
        file.flush()
"""


def test_labels_read_while_a_writer_appends_never_crash_and_every_line_is_read(tmp_path):
    """Another process appends labels, each line in two writes, while the monitor reads the file again
    and again: at every fifth line the writer waits for one read of its half-written line, then writes on
    while the next read runs. No read fails, none sees a torn label, and the last read has every line."""
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,label\n")
    lines = 1000
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(lines)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin and writer.stdout
    crashes: list[str] = []
    torn: list[str] = []
    seen = reads = 0

    def read_and_check() -> None:
        nonlocal seen, reads
        try:
            labels = read_labels(path, "label")
        except Exception as exc:  # what the test counts: any read that fails
            crashes.append(repr(exc))
            return
        reads += 1
        assert labels is not None  # the file exists from the start
        n = len(labels)  # every label read is whole, in order, with its own row and label
        read = list(zip(labels["request_id"], labels["row"], labels["label"].astype(float), strict=True))
        if n < seen or read != [(f"req-{i}", i % 3, i % 2) for i in range(n)]:
            torn.append(f"read {reads}: {n} labels, {seen} before")
        seen = n

    while writer.stdout.readline():  # the writer is in the middle of a line
        read_and_check()  # the half-written line must wait for the next read
        writer.stdin.write("go\n")
        writer.stdin.flush()
        read_and_check()  # while the writer writes on
    writer.stdin.close()
    assert writer.wait() == 0
    read_and_check()
    assert crashes == [], f"{len(crashes)} of {reads + len(crashes)} reads failed, first {crashes[0]}"
    assert torn == []
    assert reads == 2 * lines // 5 + 1
    assert seen == lines


def test_r2_chosen_in_model_py_is_what_the_monitor_computes(tmp_path, monkeypatch):
    """model.py may name r2 (bigger is better): the value is r2, not RMSE under r2's name, and a model
    that explains the target well is not below an r2 threshold."""
    from my_ml_project import model
    from sklearn.metrics import r2_score

    monkeypatch.setitem(model.PRIMARY_METRIC, "regression", "r2")
    log = folder(tmp_path)
    truth = {"a": 2.0, "b": 5.0, "c": 9.0, "d": 1.0}
    predicted = {"a": 2.5, "b": 4.5, "c": 8.0, "d": 1.5}
    write_log(log, [served(key, 20 - i, predicted[key]) for i, key in enumerate(truth)])
    window = read_window(log, NOW - timedelta(hours=1), NOW)
    labels = read_labels(labels_file(tmp_path, truth), "label")
    result = performance(window, labels, "regression", None, threshold=0.8)
    assert result["metric"] == "r2"
    assert result["value"] == pytest.approx(r2_score(list(truth.values()), list(predicted.values())))
    assert result["below_threshold"] is False
