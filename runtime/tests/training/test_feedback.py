"""Labelled production traffic as training rows: joined on request id and row, split by time, and every
label that cannot be used skipped and counted by cause."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.monitoring import labels as label_table
from ml_lifecycle._internal.training import feedback

from ..conftest import log_traffic, make_frame

NOW = datetime.now(UTC)


@pytest.fixture
def traffic(tmp_path, monkeypatch, task_type):
    """100 rows served over the last 100 minutes: (settings, the rows with their labels, ids, labels path)."""
    frame = make_frame(task_type, rows=100, seed=5)
    store = tmp_path / "store"
    ids = log_traffic(
        store, frame.drop(columns=["label"]), "r", NOW - timedelta(minutes=100), seconds_apart=60
    )
    labels = tmp_path / "labels.csv"
    monkeypatch.setenv("MY_ML_PROJECT_STORAGE__URL", str(store))
    monkeypatch.setenv("MY_ML_PROJECT_MONITORING__LABELS_PATH", str(labels))
    get_settings.cache_clear()
    yield get_settings(), frame, ids, labels
    get_settings.cache_clear()


def configured(task_type):
    return make_frame(task_type, rows=240, seed=0)


def test_labelled_rows_are_training_rows_and_the_newest_are_held_out(traffic, task_type):
    settings, frame, ids, labels = traffic
    pd.DataFrame({"request_id": ids, "label": frame["label"]}).to_csv(labels, index=False)
    found = feedback.load(settings, configured(task_type), "label", now=NOW)
    assert found.used and not any(found.skipped.values())
    assert (len(found.train), len(found.recent)) == (70, 30)  # feedback.recent_share 0.3
    assert list(found.train.columns) == list(configured(task_type).columns)
    # Oldest first, so the recent slice is the last 30 rows served: never trained on.
    pd.testing.assert_series_equal(found.recent["size"], frame["size"].iloc[70:].reset_index(drop=True))
    # Through a CSV, a float label may differ in its last bit.
    assert list(found.recent["label"]) == pytest.approx(list(frame["label"].iloc[70:]))
    parts = [source["part"] for source in found.sources(configured(task_type), "train.csv")]
    assert parts == [
        "configured data",
        "labelled traffic, trained on",
        "labelled traffic, recent slice (held out)",
    ]


def test_the_recent_slice_is_the_newest_served_whatever_order_the_labels_came_in(traffic, task_type):
    """Labels arrive in any order (the newest requests' first, here): the held-out slice is still the
    newest rows served, never the labels written last."""
    settings, frame, ids, labels = traffic
    pd.DataFrame({"request_id": ids, "label": frame["label"]}).iloc[::-1].to_csv(labels, index=False)
    found = feedback.load(settings, configured(task_type), "label", now=NOW)
    pd.testing.assert_series_equal(found.train["size"], frame["size"].iloc[:70].reset_index(drop=True))
    pd.testing.assert_series_equal(found.recent["size"], frame["size"].iloc[70:].reset_index(drop=True))


def test_labels_that_cannot_be_used_are_skipped_and_counted_by_cause(traffic, task_type):
    settings, frame, ids, labels = traffic
    good = frame["label"].astype(object).tolist()
    wrong = "not a number"
    unseen = 7 if task_type == "classification" else "also not a number"
    rows = [{"request_id": i, "label": v} for i, v in zip(ids, good, strict=True)]
    rows[0]["label"] = wrong
    rows[1]["label"] = unseen
    rows += [{"request_id": "never-served", "label": good[2]}, {"request_id": ids[3], "label": good[3]}]
    pd.DataFrame(rows).to_csv(labels, index=False)
    found = feedback.load(settings, configured(task_type), "label", now=NOW)
    expected = {label_table.NOT_SERVED: 1, label_table.SUPERSEDED: 1}
    if task_type == "classification":
        expected |= {label_table.NOT_A_NUMBER: 1, feedback.UNSEEN_CLASS: 1}
    else:
        expected |= {label_table.NOT_A_NUMBER: 2}
    assert {cause: n for cause, n in found.skipped.items() if n} == expected
    assert len(found.train) + len(found.recent) == 98
    # The training run logs this one line: the counts by cause and the file.
    assert found.warnings() == [found.labels.summary()]
    assert "1 superseded by a later label" in found.warnings()[0] and str(labels) in found.warnings()[0]


def test_a_blank_text_or_huge_row_is_skipped_and_counted_not_a_crash(traffic, task_type):
    """One bad label row made training fail (a NaN-to-integer cast); now each is skipped and counted and
    the other labels are learned from."""
    settings, frame, ids, labels = traffic
    good = pd.DataFrame({"request_id": ids, "row": 0, "label": frame["label"]}).to_csv(index=False)
    bad = "\n".join([f"{ids[0]},,1", f"{ids[1]},first,1", f"{ids[2]},1e30,1", ",0,1", f"{ids[3]},0,"])
    labels.write_text(good + bad + "\n")
    found = feedback.load(settings, configured(task_type), "label", now=NOW)
    assert found.skipped == {
        label_table.ROW_BLANK: 1,
        label_table.ROW_NOT_INTEGER: 1,
        label_table.ROW_OUT_OF_RANGE: 1,
        label_table.NO_REQUEST_ID: 1,
        label_table.NO_TARGET: 1,
    }
    assert len(found.train) + len(found.recent) == 100
    assert "1 row is blank" in found.warnings()[0]


def test_request_ids_that_look_like_numbers_match_their_requests(tmp_path, monkeypatch, task_type):
    """Ids such as 00042 (a client's X-Request-ID) stay text: read as numbers they matched nothing."""
    frame = make_frame(task_type, rows=100, seed=5)
    store = tmp_path / "store"
    numbers = [f"{i:05d}" for i in range(100)]
    log_traffic(store, frame.drop(columns=["label"]), "", NOW - timedelta(minutes=100), 60, ids=numbers)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": numbers, "label": frame["label"]}).to_csv(labels, index=False)
    monkeypatch.setenv("MY_ML_PROJECT_STORAGE__URL", str(store))
    monkeypatch.setenv("MY_ML_PROJECT_MONITORING__LABELS_PATH", str(labels))
    get_settings.cache_clear()
    found = feedback.load(get_settings(), configured(task_type), "label", now=NOW)
    assert found.skipped == {}
    assert len(found.train) + len(found.recent) == 100


def test_too_few_labelled_rows_train_the_configured_data_alone(traffic, task_type, monkeypatch):
    settings, frame, ids, labels = traffic
    pd.DataFrame({"request_id": ids[:10], "label": frame["label"][:10]}).to_csv(labels, index=False)
    found = feedback.load(settings, configured(task_type), "label", now=NOW)
    assert not found.used and found.recent.empty
    assert "fewer than feedback.min_rows" in found.note and "configured data alone" in found.note
    assert [s["part"] for s in found.sources(configured(task_type), "train.csv")] == ["configured data"]


def test_labels_older_than_the_window_are_not_used(traffic, task_type, monkeypatch):
    settings, frame, ids, labels = traffic
    pd.DataFrame({"request_id": ids, "label": frame["label"]}).to_csv(labels, index=False)
    monkeypatch.setenv("MY_ML_PROJECT_FEEDBACK__WINDOW_HOURS", "0.25")
    get_settings.cache_clear()
    found = feedback.load(get_settings(), configured(task_type), "label", now=NOW)
    assert not found.used
    assert found.skipped[label_table.NOT_SERVED] == 85  # served more than 15 minutes ago
    assert "15 usable labelled row(s)" in found.note


def test_a_labels_file_that_cannot_be_used_is_a_warning_and_the_configured_data_trains(traffic, task_type):
    settings, frame, ids, labels = traffic
    pd.DataFrame({"id": ids, "label": frame["label"]}).to_csv(labels, index=False)
    found = feedback.load(settings, configured(task_type), "label", now=NOW)
    assert not found.used and "configured data alone" in found.note
    assert "labels need the columns request_id and label" in found.warnings()[0]


def test_no_labels_file_is_the_configured_data_alone(traffic, task_type):
    settings, *_ = traffic
    found = feedback.load(settings, configured(task_type), "label", now=NOW)
    assert not found.used and "no labels" in found.note
