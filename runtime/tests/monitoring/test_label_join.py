"""One join of the request log with its labels: the monitor's performance, the watch after rollout and
training's feedback pair the same labels with the same logged rows (ids as text, rows as ints, the last
label of a request row wins, a request row logged twice is paired once)."""

from datetime import timedelta

import pandas as pd
import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.monitoring import labels as label_table
from ml_lifecycle._internal.monitoring import rollout_watch, served_traffic
from ml_lifecycle._internal.storage import Storage, open_storage
from ml_lifecycle._internal.training import feedback
from ml_lifecycle._internal.training.metrics import class_text, primary_metric

from ..conftest import make_frame
from .test_rollout_watch import (  # noqa: F401 (watched_project is a fixture)
    NEW,
    NOW,
    fitted,
    flipped,
    logged,
    saved_previous,
    watched_project,
    write_labels,
    write_served,
)


def as_key(value, task_type: str):
    """A label as the consumers compare it: a class by its text, a number rounded past CSV's last bit."""
    return class_text(value) if task_type == "classification" else round(float(value), 6)


@pytest.fixture
def joined_traffic(watched_project, task_type, monkeypatch):  # noqa: F811 (the fixture imported above)
    """40 requests the live model served half an hour ago, one of them logged twice (a client retrying
    with its own X-Request-ID), ids 00042 and 42 for two different requests; labels for all of them, plus
    one written twice, one corrected by a later conflicting label, and two for requests never served.
    Returns the settings (any row counts as evidence), the expected {request_id: label} and the frame."""
    previous_tag, _ = saved_previous(watched_project, task_type)
    frame = make_frame(task_type, rows=40, seed=8)
    frame["size"] = [float(i) for i in range(40)]  # a row's size names its request in the training rows
    rows = logged(fitted(task_type, inverted=True), frame, NEW, "new-")
    rows.loc[0, "request_id"], rows.loc[1, "request_id"] = "00042", "42"
    write_served(watched_project, pd.concat([rows, rows.iloc[[5]]], ignore_index=True), previous_tag)
    write_labels(watched_project, rows["request_id"], rows["truth"])
    write_labels(watched_project, ["new-7"], rows["truth"].iloc[[7]])  # the same label again
    corrected = flipped(rows["truth"].iloc[[9]], task_type)
    # The correction and two labels for requests never served arrive as an object in the store (labels/).
    later = {"request_id": ["new-9", "never-served", "042"], "row": 0, "label": [corrected.iloc[0], 1, 1]}
    jsonl = pd.DataFrame(later).rename(columns={"label": watched_project.data.target_column})
    open_storage(watched_project).write(
        "labels/batch-1.jsonl", jsonl.to_json(orient="records", lines=True).encode()
    )
    expected = dict(zip(rows["request_id"], rows["truth"], strict=True)) | {"new-9": corrected.iloc[0]}
    monkeypatch.setenv("MY_ML_PROJECT_ROLLOUT__MIN_ROWS", "1")
    monkeypatch.setenv("MY_ML_PROJECT_FEEDBACK__MIN_ROWS", "1")
    get_settings.cache_clear()
    return get_settings(), {k: as_key(v, task_type) for k, v in expected.items()}, rows


def test_the_monitor_the_watch_and_feedback_join_the_same_rows(joined_traffic, task_type):
    settings, expected, rows = joined_traffic
    target = settings.data.target_column
    window = served_traffic.read_window(settings, NOW - timedelta(hours=24), NOW)
    assert len(window) == 41

    # The monitor flow: read (the file and the store's objects), keep the window's labels, score
    # (flows/monitor.py's check).
    labels, report = label_table.read(settings, target, task_type)
    labels, report = label_table.served_only(labels, window, report)
    classes = rollout_watch.classes_of(window)
    found = served_traffic.labelled(window, labels, primary_metric(task_type), classes)
    monitor = {
        window.request_ids.iloc[p]: as_key(t, task_type)
        for p, t in zip(found.positions, found.truth, strict=True)
    }
    performance = served_traffic.performance(window, labels, task_type, classes, 0)
    # The watch after rollout, all of whose evidence is the live model's rows here.
    watched = rollout_watch.watch(settings, now=NOW).evidence[0]
    # Training: the labelled traffic as training rows, named by their size.
    learnt = feedback.load(
        settings, make_frame(task_type, rows=240, seed=0).rename(columns={"label": target}), target, now=NOW
    )
    trained = pd.concat([learnt.train, learnt.recent], ignore_index=True)
    names = dict(zip(rows["size"], rows["request_id"], strict=True))
    training = {names[s]: as_key(v, task_type) for s, v in zip(trained["size"], trained[target], strict=True)}

    counts = {
        "monitor": len(found),
        "monitor n_labelled": performance["n_labelled"],
        "watch": watched.live_rows,
        "feedback": len(trained),
    }
    assert counts == dict.fromkeys(counts, 40)
    assert monitor == expected and training == expected
    assert watched.live == pytest.approx(performance["value"])  # the same rows, the same answers
    skipped = {label_table.SUPERSEDED: 2, label_table.NOT_SERVED: 2}
    assert dict(report.skipped) == skipped and learnt.skipped == skipped


def test_labels_from_the_file_and_the_stores_objects_are_one_table_the_last_written_winning(tmp_path):
    """A file your system appends to and objects under labels/ (CSV, Parquet, JSON lines) are read together,
    oldest source first: a request row labelled in both is joined once, with the later label; an object
    that is no label table is named and the others still count."""
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,label\nr1,0,0\nr2,0,1\nr3,0,1\n")
    store = Storage((tmp_path / "store").as_uri())
    store.write("labels/a.csv", b"request_id,label\nr3,0\nr4,1\n")  # corrects r3
    pd.DataFrame({"request_id": ["r5"], "row": [0], "label": ["1"]}).to_parquet(tmp_path / "b.parquet")
    store.write("labels/b.parquet", (tmp_path / "b.parquet").read_bytes())
    store.write("labels/c.jsonl", b'{"request_id": "r6", "label": 0}\n[1, 2]\n{"request_id": "r1"}\n')
    store.write("labels/notes.txt", b"not a table")
    labels, report = label_table.read_sources(path, store, "label")
    assert dict(zip(labels["request_id"], labels["label"], strict=True)) == {
        "r1": "0",
        "r2": "1",
        "r3": "0",
        "r4": "1",
        "r5": "1",
        "r6": "0",
    }
    assert report.read == 3 + 2 + 1 + 3
    assert dict(report.skipped) == {
        label_table.SUPERSEDED: 1,
        label_table.NOT_AN_OBJECT: 1,
        label_table.NO_TARGET: 1,
    }
    assert len(report.unusable) == 1 and "notes.txt: unsupported file type" in report.unusable[0]
    assert "not used:" in report.summary() and report.warnings() == [report.summary()]
    served = served_window([f"r{i}" for i in range(1, 7)])
    joined, _ = label_table.join(served, labels)
    assert list(joined["request_id"]) == ["r1", "r2", "r3", "r4", "r5", "r6"]  # each request row once


def test_labels_only_in_the_store_are_read_and_none_anywhere_is_no_labels(tmp_path):
    store = Storage((tmp_path / "store").as_uri())
    assert label_table.read_sources(tmp_path / "absent.csv", store, "label")[0] is None
    store.write("labels/only.csv", b"request_id,label\nr1,1\n")
    labels, report = label_table.read_sources(tmp_path / "absent.csv", store, "label")
    assert list(labels["request_id"]) == ["r1"] and report.path == store.url_of("labels/only.csv")
    store.write("labels/broken.csv", b"id,label\nr1,1\n")
    labels, report = label_table.read_sources(None, store, "label")
    assert list(labels["request_id"]) == ["r1"] and "missing: request_id" in report.unusable[0]


def served_window(request_ids):
    from datetime import UTC, datetime

    return served_traffic.Window(
        features=pd.DataFrame({"x": range(len(request_ids))}),
        predictions=pd.Series([0] * len(request_ids), dtype=object),
        probabilities=None,
        request_ids=pd.Series(request_ids, dtype=object),
        rows=pd.Series([0] * len(request_ids), dtype="int64"),
        model_versions=pd.Series(["m:v1"] * len(request_ids), dtype=object),
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 1, 2, tzinfo=UTC),
    )
