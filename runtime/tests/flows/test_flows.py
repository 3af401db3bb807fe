"""The flows against a real (test) Prefect server: what a user sees after `train` and `monitor`."""

from datetime import UTC, datetime, timedelta

import bentoml
import pandas as pd
import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.flows.monitor import SignalLost, monitor
from ml_lifecycle._internal.flows.train import train
from ml_lifecycle._internal.monitoring import events
from ml_lifecycle._internal.records import RequestRecord
from ml_lifecycle._internal.registry import card
from ml_lifecycle._internal.registry.store import load
from ml_lifecycle._internal.serving.request_log import RequestLog
from ml_lifecycle._internal.tables import DataError
from ml_lifecycle._internal.training.metrics import primary_metric
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

from ..conftest import latest_drift_artifact, make_frame, use_training_file
from ..monitoring.verdicts import KEYS_2_0_0, ROLLOUT_KEYS_2_0_0

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def trained(csv_settings):
    return train(n_trials=3, reason="test")


def test_training_registers_a_scored_model_with_its_schema(trained, task_type):
    model = bentoml.models.get(trained)
    metadata = model.info.metadata
    assert metadata["feature_schema"]["color"]["kind"] == "category"
    assert primary_metric(task_type).name in metadata["metrics"]
    assert metadata["n_trials_finished"] >= 3
    assert len(metadata["data_hash"]) == 16
    assert len(model.custom_objects["reference"]) > 100


def test_monitoring_a_shifted_batch_emits_the_drift_event(trained, tmp_path, task_type):
    clean, shifted = tmp_path / "clean.csv", tmp_path / "shifted.csv"
    batch = make_frame(task_type, rows=200, seed=9).drop(columns=["label"])
    batch.to_csv(clean, index=False)
    batch.assign(size=batch["size"] + 5, weight=batch["weight"] * 5).to_csv(shifted, index=False)
    assert monitor(current_path=str(clean))["event_emitted"] is False
    since = datetime.now(UTC)
    verdict = monitor(current_path=str(shifted))
    assert set(verdict) == KEYS_2_0_0 and set(verdict["rollout"]) == ROLLOUT_KEYS_2_0_0
    assert verdict["event_emitted"] is True and verdict["signal_lost"] is None
    assert {"size", "weight"} <= set(verdict["drifted_columns"])
    (event,) = drift_events_since(since)  # on the server, where the retrain trigger sees it
    # The environment each environment's retrain trigger matches on (prefect.yaml); a shell run's is dev.
    assert event.resource["environment"] == "dev"


def drift_events_since(since: datetime) -> list:
    """The drift events the (test) Prefect server holds that occurred after `since`."""
    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[get_settings().drift_event]),
                occurred=EventOccurredFilter(since=since),
            ),
            limit=50,
        )
    return page.events


def shifted_batch(tmp_path, task_type) -> str:
    batch = make_frame(task_type, rows=200, seed=9).drop(columns=["label"])
    path = tmp_path / "shifted.csv"
    batch.assign(size=batch["size"] + 5, weight=batch["weight"] * 5).to_csv(path, index=False)
    return str(path)


def drop_websocket_events(monkeypatch) -> list:
    """The events connection blocked: emit_event returns its event as if sent, and nothing arrives."""
    dropped = []

    def emit_nothing(**fields):
        from prefect.events import Event

        dropped.append(Event(**fields))
        return dropped[-1]

    monkeypatch.setattr(events, "emit_event", emit_nothing)
    return dropped


def test_an_event_the_websocket_drops_is_sent_over_the_rest_api_and_confirmed(
    trained, tmp_path, task_type, monkeypatch
):
    dropped = drop_websocket_events(monkeypatch)
    # The first try waits this long for the dropped event before the REST API sends it (20 s by default).
    monkeypatch.setenv("MY_ML_PROJECT_MONITORING__EVENT_TIMEOUT_SECONDS", "6")
    get_settings.cache_clear()
    since = datetime.now(UTC)
    verdict = monitor(current_path=shifted_batch(tmp_path, task_type))
    assert verdict["event_emitted"] is True
    assert [e.id for e in drift_events_since(since)] == [dropped[0].id]  # one event, the same id


def test_an_event_that_never_arrives_fails_the_run_saying_the_retrain_signal_was_lost(
    trained, tmp_path, task_type, monkeypatch
):
    drop_websocket_events(monkeypatch)
    monkeypatch.setattr(events, "post_event", lambda event: None)  # the REST API drops it too
    prefix = "MY_ML_PROJECT_MONITORING__"
    monkeypatch.setenv(prefix + "EVENT_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv(prefix + "EVENT_RETRIES", "1")
    get_settings.cache_clear()
    state = monitor(current_path=shifted_batch(tmp_path, task_type), return_state=True)
    assert state.is_failed()
    with pytest.raises(SignalLost, match="retrain signal lost.*2 tries of 1 s") as lost:
        state.result()
    assert get_settings().drift_event in str(lost.value)


def test_bad_training_data_saves_no_model(tmp_path, monkeypatch, task_type):
    before = {str(m.tag) for m in bentoml.models.list()}
    path = tmp_path / "no_target.csv"
    make_frame(task_type).drop(columns=["label"]).to_csv(path, index=False)
    use_training_file(monkeypatch, path)
    with pytest.raises(DataError, match="target column 'label' not found"):
        train(n_trials=1)
    assert {str(m.tag) for m in bentoml.models.list()} == before


def serve_rows(model_tag: str, batch: pd.DataFrame, prefix: str) -> list[str]:
    """Log `batch` as the service would have served it just now (one /predict_one request per row)."""
    settings = get_settings()
    pipeline = load(model_tag).pipeline
    predictions = pipeline.predict(batch)
    probabilities: list[dict[str, float] | None] = [None] * len(batch)
    if hasattr(pipeline, "predict_proba"):
        classes = [str(c) for c in pipeline.classes_]
        proba = pipeline.predict_proba(batch)
        probabilities = [dict(zip(classes, map(float, p), strict=True)) for p in proba]
    now = datetime.now(UTC)
    ids = [f"{prefix}-{i}" for i in range(len(batch))]
    sink = RequestLog.of(settings)
    sink.submit(
        RequestRecord(
            request_id=request_id,
            time=now,
            endpoint="/predict_one",
            model_version=model_tag,
            row=0,
            features={k: (None if pd.isna(v) else v) for k, v in row.items()},
            prediction=prediction.item(),
            probabilities=proba,
        )
        for request_id, (_, row), prediction, proba in zip(
            ids, batch.iterrows(), predictions, probabilities, strict=True
        )
    )
    sink.close()
    return ids


@pytest.fixture
def request_log(trained):
    """The served model's request log, emptied first (the store keeps the trained model and its alias);
    `monitor()` reads its window by default."""
    from ml_lifecycle._internal.storage import REQUESTS, open_storage

    store = open_storage(get_settings())
    for listed in store.list(REQUESTS):
        store.delete(listed.key)
    return trained


def test_monitoring_reads_the_traffic_the_service_logged(request_log, task_type):
    started = datetime.now(UTC)
    batch = make_frame(task_type, rows=200, seed=11).drop(columns=["label"])
    serve_rows(request_log, batch, "clean")
    clean = monitor(start=started)
    assert clean["source"].startswith("request log") and clean["n_current"] == 200
    assert clean["event_emitted"] is False
    assert clean["prediction_drift"]["method"]

    shifted_from = datetime.now(UTC)
    serve_rows(request_log, batch.assign(size=batch["size"] + 5, weight=batch["weight"] * 5), "shifted")
    verdict = monitor(start=shifted_from)
    assert verdict["n_current"] == 200
    assert verdict["event_emitted"] is True
    assert {"size", "weight"} <= set(verdict["drifted_columns"])


def test_a_line_that_is_no_record_is_skipped_and_reported(request_log, task_type):
    """A line in the log that is no record (an object edited by hand, or not the service's) is skipped; the
    monitor reads the rest and says what it skipped, in the verdict and in the artifact."""
    from ml_lifecycle._internal.serving.request_log import partition
    from ml_lifecycle._internal.storage import open_storage

    started = datetime.now(UTC)
    batch = make_frame(task_type, rows=120, seed=13).drop(columns=["label"])
    serve_rows(request_log, batch.iloc[:60], "before")
    store = open_storage(get_settings())
    key = f"{partition(datetime.now(UTC))}/foreign.jsonl"
    store.write(key, b'{"request_id": "torn", "time": "20\n')
    serve_rows(request_log, batch.iloc[60:], "after")
    verdict = monitor(start=started)
    assert verdict["n_current"] == 120
    assert verdict["skipped_lines"] == 1 and verdict["skipped_where"][0].startswith(f"{store.url_of(key)}:1 ")
    assert any("1 unreadable lines skipped" in w for w in verdict["log_warnings"])
    assert "1 unreadable lines skipped" in latest_drift_artifact()


def test_a_log_shorter_than_the_window_is_reported_as_such(request_log, task_type):
    """The window asked for is 24 h; the log reaches back a few seconds: the verdict, the artifact and the
    warning say how much it covers instead of reporting 24 h."""
    batch = make_frame(task_type, rows=60, seed=14).drop(columns=["label"])
    serve_rows(request_log, batch, "young")
    verdict = monitor()
    window = verdict["window"]
    assert window["requested_hours"] == 24 and window["covered_hours"] < 0.1
    assert window["complete"] is False
    assert "of the requested 24 h" in window["note"] and "logging only since then" in window["note"]
    assert "of the requested 24 h" in verdict["source"]
    assert "of the requested 24 h" in latest_drift_artifact()


def test_an_empty_window_is_a_verdict_without_an_event(request_log):
    verdict = monitor(start=datetime.now(UTC) - timedelta(seconds=1))
    assert set(verdict) == KEYS_2_0_0  # the same keys as a judged verdict's
    assert verdict["n_current"] == 0
    assert verdict["event_emitted"] is False
    assert "min_rows" in verdict["quality"]["too_few_rows"]


def test_labels_worse_than_the_threshold_ask_for_retraining(request_log, task_type, tmp_path, monkeypatch):
    started = datetime.now(UTC)
    batch = make_frame(task_type, rows=120, seed=12)
    ids = serve_rows(request_log, batch.drop(columns=["label"]), "labelled")
    truth = batch["label"]
    # Wrong labels: classes flipped, or values far off, so the model looks bad on this window.
    wrong = 1 - truth if task_type == "classification" else truth + 100
    pd.DataFrame({"request_id": ids, "row": 0, "label": wrong}).to_csv(tmp_path / "labels.csv", index=False)
    with (tmp_path / "labels.csv").open("a") as labels:  # bad rows: skipped and counted, the verdict stands
        labels.write(f"{ids[0]},,1\n{ids[1]},first,1\n{ids[2]},1e30,1\n")
    prefix = "MY_ML_PROJECT_MONITORING__"
    monkeypatch.setenv(prefix + "LABELS_PATH", str(tmp_path / "labels.csv"))
    monkeypatch.setenv(prefix + "PERFORMANCE_THRESHOLD", "0.9" if task_type == "classification" else "10")
    get_settings.cache_clear()
    verdict = monitor(start=started)
    assert verdict["performance"]["n_labelled"] == 120
    assert verdict["performance"]["metric"] == primary_metric(task_type).name
    assert verdict["performance"]["below_threshold"] is True
    assert verdict["event_emitted"] is True
    assert verdict["labels"]["skipped"] == {
        "row is blank": 1,
        "row is not a whole number": 1,
        "row is negative or too large": 1,
    }
    assert "| row is not a whole number | 1 |" in latest_drift_artifact()


def newest_artifact(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no {key} artifact"
    return found[0]


def test_training_writes_the_models_card_and_shows_it_and_the_tuning_progress(trained, csv_settings):
    """The card beside the model, with the gate's verdict the same run added; the card and tuning's
    progress (all of the study's trials finished, the best value) as the run's artifacts."""
    found = card.load(csv_settings, trained)
    assert found is not None and found.tag == trained
    assert found.verdicts and found.verdicts[-1]["candidate"] == trained
    assert sorted(i.column for i in found.importance) == ["color", "size", "weight"]
    page = newest_artifact("model-card")
    assert page.type == "markdown" and f"# Model card: `{trained}`" in str(page.data)
    progress = newest_artifact("tuning-progress")
    assert progress.type == "progress" and progress.data == 100.0
    assert f"of 3 trials finished; best {found.primary_metric} so far" in str(progress.description)


def label_served_rows(tmp_path, monkeypatch, ids: list[str], truth: pd.Series) -> None:
    pd.DataFrame({"request_id": ids, "label": truth.to_numpy()}).to_csv(tmp_path / "labels.csv", index=False)
    monkeypatch.setenv("MY_ML_PROJECT_MONITORING__LABELS_PATH", str(tmp_path / "labels.csv"))
    get_settings.cache_clear()


def test_a_retrain_learns_from_labelled_traffic_and_records_where_its_rows_came_from(
    request_log, task_type, tmp_path, monkeypatch
):
    batch = make_frame(task_type, rows=100, seed=14)
    ids = serve_rows(request_log, batch.drop(columns=["label"]), "fed")
    label_served_rows(tmp_path, monkeypatch, ids, batch["label"])
    with (tmp_path / "labels.csv").open("a") as labels:  # skipped and counted, never a failed run
        labels.write(f"{ids[0]},\n,1\n")
    retrained = load(train(n_trials=3, reason="test"))
    sources = {s["part"]: s["rows"] for s in retrained.metadata["data_sources"]}
    assert sources == {
        "configured data": 240,
        "labelled traffic, trained on": 70,
        "labelled traffic, recent slice (held out)": 30,
    }
    # New training rows are a new study, not the old one resumed.
    assert retrained.metadata["data_hash"] != load(request_log).metadata["data_hash"]
    # The drift reference is the world it learned last: the newest labelled traffic.
    pd.testing.assert_frame_equal(
        retrained.reference,
        batch.drop(columns=["label"]).tail(len(retrained.reference)).reset_index(drop=True),
        check_dtype=False,
    )
    assert len(retrained.reference) >= 30


def test_a_retrain_with_too_few_labelled_rows_trains_on_the_configured_data(
    request_log, task_type, tmp_path, monkeypatch
):
    batch = make_frame(task_type, rows=10, seed=14)
    ids = serve_rows(request_log, batch.drop(columns=["label"]), "few")
    label_served_rows(tmp_path, monkeypatch, ids, batch["label"])
    retrained = load(train(n_trials=3, reason="test"))
    assert [s["part"] for s in retrained.metadata["data_sources"]] == ["configured data"]
    assert retrained.metadata["data_hash"] == load(request_log).metadata["data_hash"]
