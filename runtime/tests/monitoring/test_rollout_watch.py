"""The watch after rollout's decisions, on synthetic windows, labels and /metrics text (no service, no
Prefect): worse beyond a threshold rolls back, within is healthy, too few rows is not enough evidence, and
outside the watch period (or without a previous model) nothing is judged."""

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from ml_lifecycle._internal.config import PACKAGE, get_settings
from ml_lifecycle._internal.monitoring import rollout_watch
from ml_lifecycle._internal.monitoring.rollout_watch import Served
from ml_lifecycle._internal.monitoring.served_traffic import Window
from ml_lifecycle._internal.monitoring.verdict import Rollout
from ml_lifecycle._internal.records import RequestRecord
from ml_lifecycle._internal.registry import aliases, store
from ml_lifecycle._internal.serving.request_log import RequestLog
from ml_lifecycle._internal.tables import feature_schema
from ml_lifecycle._internal.training.metrics import primary_metric
from ml_lifecycle._internal.training.pipeline import build_pipeline
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ..conftest import make_frame

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
OLD, NEW = "my_ml_project:old", "my_ml_project:new"


def record(promoted_hours_ago: float = 1.0) -> aliases.AliasRecord:
    """The alias record after NEW replaced OLD `promoted_hours_ago` hours before NOW."""
    return aliases.AliasRecord(
        history=[
            {"tag": OLD, "since": (NOW - timedelta(days=3)).isoformat(), "reason": "train"},
            {"tag": NEW, "since": (NOW - timedelta(hours=promoted_hours_ago)).isoformat(), "reason": "train"},
        ]
    )


def pair() -> rollout_watch.Pair:
    found = rollout_watch.watched_pair(record(), NOW, 24)
    assert isinstance(found, rollout_watch.Pair), found
    return found


def fitted(task_type: str, *, inverted: bool = False, seed: int = 0) -> store.RegisteredModel:
    """A real fitted model (not in the store): learnt on the world as it is, or on its labels inverted
    (classification: the other class; regression: mirrored), so it is clearly worse."""
    frame = make_frame(task_type, seed=seed)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    if inverted:
        labels = 1 - labels if task_type == "classification" else -labels
    schema = feature_schema(features)
    params = {"n_estimators": 30, "max_depth": 6, "min_samples_leaf": 2, "max_features": 0.8}
    pipeline = build_pipeline(schema, "random_forest", task_type, params, seed=0).fit(features, labels)
    return store.RegisteredModel("unsaved", pipeline, {"task_type": task_type}, schema, features)


def logged(model: store.RegisteredModel, frame: pd.DataFrame, version: str, prefix: str) -> pd.DataFrame:
    """What the service logs for `frame`'s rows served by `model`: features, prediction, probabilities."""
    features = frame.drop(columns=["label"]).reset_index(drop=True)
    served = pd.DataFrame({"request_id": [f"{prefix}{i}" for i in range(len(frame))]})
    served["model_version"] = version
    served["truth"] = frame["label"].to_numpy()
    served["prediction"] = pd.Series(model.pipeline.predict(features)).astype(object)
    if hasattr(model.pipeline, "predict_proba"):
        classes = [str(c) for c in model.pipeline.classes_]
        served["probabilities"] = pd.Series(
            pd.DataFrame(model.pipeline.predict_proba(features), columns=classes).to_dict("records")
        )
    else:
        served["probabilities"] = None
    return pd.concat([served, features], axis=1)


def window_of(rows: pd.DataFrame, task_type: str) -> Window:
    probabilities = None if task_type == "regression" else pd.DataFrame(list(rows["probabilities"]))
    return Window(
        features=rows[["size", "weight", "color"]].reset_index(drop=True),
        predictions=rows["prediction"].astype(object).reset_index(drop=True),
        probabilities=probabilities,
        request_ids=rows["request_id"].astype(object).reset_index(drop=True),
        rows=pd.Series([0] * len(rows), dtype="int64"),
        model_versions=rows["model_version"].astype(object).reset_index(drop=True),
        start=NOW - timedelta(days=3),
        end=NOW,
    )


def window_and_labels(
    task_type: str,
    *,
    live_good: bool,
    live_rows: int = 60,
    previous_rows: int = 60,
    previous: store.RegisteredModel | None = None,
) -> tuple[Window, pd.DataFrame, store.RegisteredModel]:
    """The previous model (good) served `previous_rows` rows, then the live one (good or inverted)
    `live_rows` more; the labels are right. Returns the window, the labels and the previous model."""
    previous = previous or fitted(task_type)
    live = previous if live_good else fitted(task_type, inverted=True)
    rows = pd.concat(
        [
            logged(previous, make_frame(task_type, rows=previous_rows, seed=7), OLD, "old-"),
            logged(live, make_frame(task_type, rows=live_rows, seed=8), NEW, "new-"),
        ],
        ignore_index=True,
    )
    labels = pd.DataFrame({"request_id": rows["request_id"], "row": 0, "label": rows["truth"]})
    return window_of(rows, task_type), labels, previous


def judge_performance(
    task_type: str, window: Window, labels: pd.DataFrame, previous, min_rows: int = 50, metric=None
):
    metric = metric or primary_metric(task_type)
    return rollout_watch.compare_performance(window, labels, NEW, previous, metric, min_rows, 0.02)


def test_worse_performance_on_labelled_rows_rolls_back(task_type):
    window, labels, previous = window_and_labels(task_type, live_good=False)
    evidence = judge_performance(task_type, window, labels, previous)
    verdict = rollout_watch.decide(pair(), [evidence])
    metric = primary_metric(task_type).name
    assert evidence.state == "worse" and (evidence.live_rows, evidence.previous_rows) == (60, 60)
    assert verdict.state == "roll back" and verdict.roll_back
    assert verdict.reason.startswith(f"automatic: {metric} ")
    assert "for the previous model on the same 60 labelled rows" in verdict.reason
    assert "worse by more than rollout.max_metric_drop 0.02" in verdict.reason
    assert (verdict.live, verdict.previous) == (NEW, OLD)


def test_performance_within_the_threshold_is_healthy(task_type):
    window, labels, previous = window_and_labels(task_type, live_good=True)
    evidence = judge_performance(task_type, window, labels, previous)
    verdict = rollout_watch.decide(pair(), [evidence])
    assert evidence.state == "ok" and evidence.live == pytest.approx(evidence.previous)
    assert verdict.state == "healthy"
    assert verdict.reason.startswith(f"{NEW} is not worse than {OLD} on performance")


def test_too_few_labelled_rows_is_not_enough_evidence_yet(task_type):
    window, labels, previous = window_and_labels(task_type, live_good=False, live_rows=20)
    evidence = judge_performance(task_type, window, labels, previous)
    verdict = rollout_watch.decide(pair(), [evidence])
    assert evidence.state == "not enough evidence"
    assert "20 labelled rows served by the live model; rollout.min_rows is 50" in evidence.detail
    assert verdict.state == "not enough evidence"
    metric = primary_metric(task_type)
    no_labels = rollout_watch.compare_performance(window, None, NEW, previous, metric, 50, 0.02)
    assert no_labels.state == "not enough evidence" and "no labels yet" in no_labels.detail


def test_the_5xx_share_rule():
    calm = Served(outcomes={"ok": 995, "refused": 5})
    judge = rollout_watch.compare_error_share
    failing = Served(outcomes={"ok": 90, "error": 10})
    assert judge(failing, calm, 50, 0.01).state == "worse"
    assert "5xx share 10.00% of 100 requests vs 0.00% of 1000" in judge(failing, calm, 50, 0.01).detail
    assert judge(Served(outcomes={"ok": 99, "error": 1}), calm, 50, 0.01).state == "ok"  # +0.01: not more
    assert judge(failing, calm, 500, 0.01).state == "not enough evidence"  # 100 requests < 500
    assert judge(None, calm, 50, 0.01).state == "not enough evidence"  # the live version not on /metrics
    verdict = rollout_watch.decide(pair(), [judge(failing, calm, 50, 0.01)])
    assert verdict.state == "roll back" and "rollout.max_error_rate_increase 0.01" in verdict.reason


def buckets(counts: dict[float, int]) -> dict[float, float]:
    """Cumulative buckets (upper bound -> count) from observations per bucket."""
    total, cumulative = 0, {}
    for bound in sorted(counts):
        total += counts[bound]
        cumulative[bound] = float(total)
    return cumulative


def test_the_p99_rule():
    fast = Served(outcomes={"ok": 100}, buckets=buckets({0.05: 100, 0.1: 0, math.inf: 0}))
    slow = Served(outcomes={"ok": 100}, buckets=buckets({0.05: 50, 0.1: 0, 0.5: 50, math.inf: 0}))
    judge = rollout_watch.compare_p99
    worse = judge(slow, fast, 50, 2.0)
    assert worse.state == "worse"
    assert worse.live == pytest.approx(0.492) and worse.previous == pytest.approx(0.0495)
    assert "p99 latency 492 ms over 100 requests vs " in worse.detail
    assert "> rollout.max_p99_ratio 2" in worse.detail
    assert judge(fast, fast, 50, 2.0).state == "ok"
    assert judge(slow, fast, 101, 2.0).state == "not enough evidence"


def test_the_prediction_distribution_is_reported_never_judged(task_type):
    window, _, _ = window_and_labels(task_type, live_good=False)
    evidence = rollout_watch.compare_predictions(window, NEW, OLD, task_type, 50)
    assert evidence.state == "reported" and evidence.live and evidence.previous
    verdict = rollout_watch.decide(pair(), [evidence])
    assert verdict.state == "not enough evidence"  # reported evidence alone judges nothing


def test_outside_the_watch_period_nothing_is_judged():
    over = rollout_watch.watched_pair(record(promoted_hours_ago=30), NOW, 24)
    assert isinstance(over, str) and "its watch is over" in over and "rollout.watch_hours (24 h)" in over
    off = rollout_watch.watched_pair(record(), NOW, 0)
    assert off == "rollout.watch_hours is 0: no watch after rollout, no automatic rollback"


def test_without_a_previous_model_nothing_is_judged():
    first = aliases.AliasRecord(history=[{"tag": NEW, "since": NOW.isoformat(), "reason": "train"}])
    found = rollout_watch.watched_pair(first, NOW, 24)
    assert isinstance(found, str) and "first production model" in found
    assert rollout_watch.watched_pair(aliases.AliasRecord(), NOW, 24) == "no production model yet"


def test_a_model_put_back_by_a_rollback_is_not_watched_against_the_one_before():
    restored = record(promoted_hours_ago=2)
    restored.rolled_back.append({"tag": f"{PACKAGE}:bad", "since": (NOW - timedelta(hours=1)).isoformat()})
    found = rollout_watch.watched_pair(restored, NOW, 24)
    assert isinstance(found, str) and "put back by a rollback" in found


def metrics_text() -> str:
    """/metrics as the service exposes it: outcomes per version and the latency histogram with
    prometheus_client's standard buckets."""
    registry = CollectorRegistry()
    requests = Counter(
        f"{PACKAGE}_prediction_requests", "answers", ["model_version", "outcome"], registry=registry
    )
    latency = Histogram(
        f"{PACKAGE}_prediction_latency_seconds", "latency", ["model_version"], registry=registry
    )
    for i in range(200):
        latency.labels(model_version=OLD).observe(0.02)
        latency.labels(model_version=NEW).observe(0.02 if i < 196 else 0.3)  # 4 of 200 slow
        requests.labels(model_version=OLD, outcome="ok").inc()
        requests.labels(model_version=NEW, outcome="ok" if i < 190 else "error").inc()
    requests.labels(model_version=OLD, outcome="shed").inc(3)
    return generate_latest(registry).decode()


def test_metrics_text_is_parsed_per_version_with_the_right_p99():
    served = rollout_watch.parse_metrics(metrics_text())
    assert set(served) == {OLD, NEW}
    assert served[OLD].outcomes == {"ok": 200, "shed": 3} and served[OLD].requests == 203
    assert served[NEW].error_share == pytest.approx(10 / 200)
    assert served[NEW].observed == 200
    # rank 198 of 200: 196 below 0.25 s, the other 4 in (0.25, 0.5]: 0.25 + 0.25 * 2/4
    assert rollout_watch.histogram_quantile(0.99, served[NEW].buckets) == pytest.approx(0.375)
    # rank 198 of 200, all in (0.01, 0.025]: 0.01 + 0.015 * 198/200
    assert rollout_watch.histogram_quantile(0.99, served[OLD].buckets) == pytest.approx(0.02485)
    assert rollout_watch.histogram_quantile(0.99, {}) is None
    assert rollout_watch.histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert rollout_watch.histogram_quantile(0.99, {0.1: 0.0, math.inf: 5.0}) == 0.1  # in +Inf: top bound


@pytest.fixture
def watched_project(tmp_path, monkeypatch, settings):
    """A model store, request log and labels of its own, NEW promoted an hour ago over OLD, and a service
    URL where nothing listens."""
    prefix = "MY_ML_PROJECT"
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv(f"{prefix}_STORAGE__URL", str(tmp_path / "store"))
    monkeypatch.setenv(f"{prefix}_MONITORING__LABELS_PATH", str(tmp_path / "labels.csv"))
    monkeypatch.setenv(f"{prefix}_ROLLOUT__SERVICE_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    current = get_settings()

    def watched(alias_record: aliases.AliasRecord) -> None:
        alias_record.history[:] = record().history

    aliases.change(current, watched)
    yield current
    get_settings.cache_clear()


def saved_previous(settings, task_type: str) -> tuple[str, store.RegisteredModel]:
    """The previous model, good, saved in the store and recorded as the one NEW replaced."""
    previous = fitted(task_type)
    tag = store.save(
        settings,
        previous.pipeline,
        schema=previous.schema,
        reference=previous.reference,
        metrics={},
        params={},
        data_hash="test_rollout_watch",
    )
    aliases.change(settings, lambda alias_record: alias_record.history[0].update(tag=tag))
    return tag, previous


def write_served(settings, rows: pd.DataFrame, previous_tag: str) -> None:
    """The request log of `rows` (features as sent, what each version answered), served half an hour ago."""
    log = RequestLog.of(settings)
    log.submit(
        RequestRecord(
            request_id=row["request_id"],
            time=NOW - timedelta(minutes=30),
            endpoint="/predict_one",
            model_version=previous_tag if row["model_version"] == OLD else row["model_version"],
            row=0,
            features={c: (None if pd.isna(row[c]) else row[c]) for c in ("size", "weight", "color")},
            prediction=row["prediction"],
            probabilities=row["probabilities"],
        )
        for row in rows.to_dict("records")
    )
    log.close()


def write_labels(settings, request_ids, truth) -> None:
    path = settings.resolve(settings.monitoring.labels_path)
    table = pd.DataFrame(
        {"request_id": list(request_ids), "row": 0, settings.data.target_column: list(truth)}
    )
    table.to_csv(path, mode="a", header=not path.exists(), index=False)


def test_the_watch_reads_log_and_labels_and_judges_on_the_rest_without_metrics(watched_project, task_type):
    previous_tag, previous = saved_previous(watched_project, task_type)
    rows = pd.concat(
        [
            logged(previous, make_frame(task_type, rows=60, seed=7), OLD, "old-"),
            logged(fitted(task_type, inverted=True), make_frame(task_type, rows=60, seed=8), NEW, "new-"),
        ],
        ignore_index=True,
    )
    write_served(watched_project, rows, previous_tag)
    write_labels(watched_project, rows["request_id"], rows["truth"])
    verdict = rollout_watch.watch(watched_project, now=NOW)
    states = {e.name: e.state for e in verdict.evidence}
    assert states == {
        "performance": "worse",
        "5xx share": "unavailable",
        "p99 latency": "unavailable",
        "predictions": "reported",
    }
    unread = verdict.evidence[1].detail
    assert "could not be read" in unread and "judged on the rest" in unread
    assert verdict.state == "roll back" and verdict.reason.startswith("automatic: ")
    artifact = rollout_watch.markdown(verdict.as_dict())
    assert artifact.startswith("# Watch after rollout: roll back")
    assert "| performance |" in artifact and "| 60 / 60 | worse |" in artifact


def flipped(truth: pd.Series, task_type: str) -> pd.Series:
    return 1 - truth if task_type == "classification" else -truth


def test_conflicting_labels_do_not_roll_back_a_better_model(watched_project, task_type):
    """The issue's story: the world changed, the retrained model serves it well, the previous one does
    not; then conflicting labels for 30% of the live model's rows are appended (the last label counts).
    Judged on its own earlier traffic, the previous model looked better and the better model was rolled
    back; on the same rows, it is not."""
    previous_tag, previous = saved_previous(watched_project, task_type)
    old_world = make_frame(task_type, rows=120, seed=7)
    new_world = make_frame(task_type, rows=169, seed=8)
    new_world["label"] = flipped(new_world["label"], task_type)  # the relationship changed
    live = fitted(task_type, inverted=True)  # learnt the changed world
    rows = pd.concat(
        [logged(previous, old_world, OLD, "old-"), logged(live, new_world, NEW, "new-")], ignore_index=True
    )
    write_served(watched_project, rows, previous_tag)
    write_labels(watched_project, rows["request_id"], rows["truth"])
    conflicting = rows[rows["model_version"] == NEW].sample(frac=0.3, random_state=0)
    write_labels(watched_project, conflicting["request_id"], flipped(conflicting["truth"], task_type))
    verdict = rollout_watch.watch(watched_project, now=NOW)
    performance = verdict.evidence[0]
    assert len(conflicting) == 51 and performance.live_rows == 169
    assert performance.state == "ok", performance.detail
    assert verdict.state == "healthy", verdict.reason
    assert primary_metric(task_type).improvement(performance.live, performance.previous) > 0


def test_a_clearly_worse_model_is_rolled_back_under_30_percent_label_noise(watched_project, task_type):
    previous_tag, previous = saved_previous(watched_project, task_type)
    rows = logged(fitted(task_type, inverted=True), make_frame(task_type, rows=169, seed=8), NEW, "new-")
    write_served(watched_project, rows, previous_tag)
    noisy = rows["truth"].copy()
    flip = rows.sample(frac=0.3, random_state=1).index
    noisy[flip] = flipped(noisy[flip], task_type)
    write_labels(watched_project, rows["request_id"], noisy)
    verdict = rollout_watch.watch(watched_project, now=NOW)
    assert verdict.evidence[0].state == "worse", verdict.evidence[0].detail
    assert verdict.state == "roll back"


def test_r2_judges_a_better_regression_model_better(task_type):
    """r2 (bigger is better), named in model.py: a live model that fits the rows better stays."""
    from ml_lifecycle._internal.training.metrics import METRICS

    good, bad = fitted("regression"), fitted("regression", inverted=True)
    rows = logged(good, make_frame("regression", rows=80, seed=8), NEW, "new-")
    labels = pd.DataFrame({"request_id": rows["request_id"], "row": 0, "label": rows["truth"]})
    window = window_of(rows, "regression")
    kept = judge_performance("regression", window, labels, bad, metric=METRICS["r2"])
    assert kept.state == "ok" and kept.live > kept.previous, kept.detail
    rows = logged(bad, make_frame("regression", rows=80, seed=8), NEW, "new-")
    window = window_of(rows, "regression")
    labels = pd.DataFrame({"request_id": rows["request_id"], "row": 0, "label": rows["truth"]})
    worse = judge_performance("regression", window, labels, good, metric=METRICS["r2"])
    assert worse.state == "worse" and "r2 " in worse.detail


def test_the_watch_outside_its_period_says_why(watched_project):
    verdict = rollout_watch.watch(watched_project, now=NOW + timedelta(days=2))
    assert verdict.state == "not watched" and "its watch is over" in verdict.reason
    assert rollout_watch.markdown(verdict.as_dict()).startswith("# Watch after rollout: not watched")


def test_a_rollback_that_cannot_happen_is_reported_not_raised(watched_project):
    from ml_lifecycle._internal.flows.monitor import roll_back

    watched = Rollout("roll back", "automatic: test", live=NEW, previous=OLD)
    gone = roll_back(watched_project, watched)  # OLD is not in the model store
    assert gone.state == "rollback failed" and "no longer in the store" in gone.rollback_error
    moved = roll_back(watched_project, replace(watched, live=f"{PACKAGE}:other"))
    assert moved.state == "rollback failed"
    assert moved.rollback_error == (
        f"LookupError: production is {NEW}, not {PACKAGE}:other; nothing rolled back"
    )
    assert aliases.read(watched_project).production == NEW  # nothing changed


def test_two_monitors_rolling_back_at_once_one_acts_the_other_says_it_is_done(watched_project, task_type):
    """Two monitor runs judged the same promotion worse at the same moment: one rolls back, the other
    finds it done (no "rollback failed", so no false alert)."""
    from concurrent.futures import ThreadPoolExecutor

    from ml_lifecycle._internal.flows.monitor import roll_back

    previous_tag, _ = saved_previous(watched_project, task_type)
    watched = Rollout("roll back", "automatic: test", live=NEW, previous=previous_tag)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: roll_back(watched_project, watched), range(2)))
    states = sorted(result.state for result in results)
    assert states == ["already rolled back", "rolled back"], results
    done = next(result for result in results if result.state == "already rolled back")
    assert f"{NEW} was rolled back already at " in done.reason
    assert aliases.read(watched_project).production == previous_tag


def test_rows_the_previous_model_cannot_read_are_no_evidence_not_a_crash(task_type):
    """The live model serves a column set the previous one never saw (an accepted schema change)."""
    window, labels, previous = window_and_labels(task_type, live_good=True)
    window = replace(window, features=window.features.drop(columns=["weight"]))
    evidence = judge_performance(task_type, window, labels, previous)
    assert evidence.state == "not enough evidence"
    assert "cannot be compared on these rows" in evidence.detail and "weight" in evidence.detail
