"""The replay before promotion: candidate and production score the recorded requests, on a real store."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.registry import aliases, promotion, replay, store
from ml_lifecycle._internal.training.metrics import primary_metric

from ..conftest import log_traffic, make_frame, register, use_training_file

NOW = datetime.now(UTC)


@pytest.fixture
def project(tmp_path, monkeypatch, task_type):
    """A store, request log and labels file of this test's own, and the training CSV (target `label`)."""
    monkeypatch.setenv("MY_ML_PROJECT_STORAGE__URL", str(tmp_path / "store"))
    monkeypatch.setenv("MY_ML_PROJECT_MONITORING__LABELS_PATH", str(tmp_path / "labels.csv"))
    path = tmp_path / "train.csv"
    make_frame(task_type).to_csv(path, index=False)
    yield use_training_file(monkeypatch, path)
    get_settings.cache_clear()


def served(settings, rows: int = 120, seed: int = 9) -> tuple[pd.DataFrame, list[str]]:
    """`rows` requests served over the last hours (features as sent), with their labels; and their ids."""
    frame = make_frame(settings.data.task_type, rows=rows, seed=seed)
    ids = log_traffic(
        settings.resolve(settings.storage.url), frame.drop(columns=["label"]), "q", NOW - timedelta(hours=2)
    )
    return frame, ids


def write_labels(settings, ids: list[str], truth: pd.Series) -> None:
    table = pd.DataFrame({"request_id": ids, "label": truth.to_numpy()})
    table.to_csv(settings.resolve(settings.monitoring.labels_path), index=False)


def test_disagreement_counts_other_classes_and_values_beyond_the_tolerance():
    assert replay.disagreement(np.array([1, 0, 1, 1]), np.array(["1", "0", "0", "1"]), "classification") == (
        0.25,
        None,
    )
    share, mean = replay.disagreement(
        np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.0, 2.1, 3.0, 4.0]), "regression", 0.5
    )
    assert share == 0.25 and mean == pytest.approx((0.1 + 6.0) / 4)


def test_a_candidate_identical_to_production_disagrees_on_no_row(project, task_type):
    frame, ids = served(project)
    write_labels(project, ids, frame["label"])
    tag = register(project, task_type)
    model = store.load(tag, project)
    found = replay.replay(project, model, model, target_spread=float(frame["label"].std()))
    assert found.replayed and found.rows == len(frame)
    assert found.disagreement == 0.0
    assert found.latency_ratio is not None and found.latency_ratio > 0
    assert found.candidate_ms_per_1000 and found.production_ms_per_1000
    # Every replayed row has its label: both models' primary metric on them, equal for one model.
    assert found.labelled_rows == len(frame)
    assert found.candidate_metric == found.production_metric is not None
    assert replay.limit_exceeded(found, max_disagreement=0.01, max_latency_ratio=1e9) == ""


def test_a_candidate_that_predicts_otherwise_disagrees_and_scores_worse_on_the_labels(project, task_type):
    frame, ids = served(project)
    write_labels(project, ids[:60], frame["label"][:60])
    good = store.load(register(project, task_type), project)
    scrambled = store.load(register(project, task_type, scrambled=True), project)
    found = replay.replay(project, scrambled, good, target_spread=float(frame["label"].std()))
    assert found.disagreement is not None and found.disagreement > 0.1
    assert found.labelled_rows == 60
    assert found.candidate_metric is not None and found.production_metric is not None
    metric = primary_metric(task_type)
    assert metric.improvement(found.production_metric, found.candidate_metric) > 0  # production is better
    if task_type == "regression":
        assert found.mean_abs_difference is not None and found.mean_abs_difference > 0
    reason = replay.limit_exceeded(found, max_disagreement=0.05, max_latency_ratio=1e9)
    assert "promotion.max_disagreement 0.05" in reason and f"{found.disagreement:.1%}" in reason
    assert replay.limit_exceeded(found, max_disagreement=1, max_latency_ratio=1e9) == ""  # 1: never refused


def test_a_slower_candidate_is_refused_by_the_latency_ratio():
    found = replay.Replay(
        state="replayed",
        note="",
        rows=100,
        disagreement=0.0,
        candidate_ms_per_1000=40.0,
        production_ms_per_1000=10.0,
        latency_ratio=4.0,
    )
    assert "promotion.max_latency_ratio 3" in replay.limit_exceeded(found, 0.5, 3.0)
    assert replay.limit_exceeded(found, 0.5, 5.0) == ""


def test_without_recorded_requests_the_replay_is_skipped_and_refuses_nothing(project, task_type):
    model = store.load(register(project, task_type), project)
    found = replay.replay(project, model, model, target_spread=1.0)
    assert not found.replayed and "fewer than monitoring.min_rows" in found.note
    assert replay.limit_exceeded(found, 0.01, 1.0) == ""
    assert "Skipped: 0 recorded request rows" in found.markdown()


def test_the_gate_refuses_a_candidate_beyond_max_disagreement_and_says_which_setting(
    project, task_type, monkeypatch
):
    frame, ids = served(project)
    production = register(project, task_type, scrambled=True)
    aliases.change(project, lambda record: record.history.append(aliases.entry(production, "test")))
    holdout = make_frame(task_type, rows=200, seed=21)
    features, labels = holdout.drop(columns=["label"]), holdout["label"]
    candidate = register(project, task_type)
    # Judged only: the verdict (with the replay), production unchanged.
    judged = promotion.promote(project, candidate, features, labels, "test", judge_only=True)
    assert judged.passed and judged.replay is not None and judged.replay["state"] == "replayed"
    assert aliases.production_tag(project) == production

    monkeypatch.setenv("MY_ML_PROJECT_PROMOTION__MAX_DISAGREEMENT", "0.01")
    get_settings.cache_clear()
    strict = get_settings()
    refused = promotion.promote(strict, candidate, features, labels, "test")
    assert not refused.passed and "promotion.max_disagreement 0.01" in refused.reason
    assert aliases.production_tag(strict) == production

    # The verdict reached before (as a person approves it) is promoted as it is: production has not changed.
    approved = promotion.promote(strict, candidate, features, labels, "approved", judged=judged)
    assert approved is judged and aliases.production_tag(strict) == candidate
    assert aliases.read(strict).history[-1]["reason"] == "approved"
