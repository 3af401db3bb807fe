import numpy as np
import pytest
from ml_lifecycle._internal.config import MonitoringSettings
from ml_lifecycle._internal.monitoring.drift import (
    compute_drift,
    markdown_summary,
    parse_snapshot,
    prepare_current,
    sample_rows,
)
from ml_lifecycle._internal.tables import DataError, conform, feature_schema

from ..conftest import make_frame


@pytest.fixture(scope="module")
def reference():
    features = make_frame("regression", rows=600, seed=1).drop(columns=["label"])
    return conform(features, feature_schema(features)), feature_schema(features)


def test_a_batch_from_the_same_distribution_does_not_drift(reference):
    frame, schema = reference
    current = prepare_current(make_frame("regression", rows=300, seed=2), schema, "clean.csv")
    result, _ = compute_drift(frame, current, schema, threshold=0.5)
    assert not result.drifted
    assert result.drift_share < 0.5


def test_a_shifted_batch_drifts_and_names_its_columns(reference):
    frame, schema = reference
    shifted = make_frame("regression", rows=300, seed=3)
    shifted["size"] += 3
    shifted["weight"] *= 4
    result, _ = compute_drift(frame, prepare_current(shifted, schema, "shifted.csv"), schema, threshold=0.5)
    assert result.drifted
    assert {"size", "weight"} <= set(result.drifted_columns)
    assert result.payload()["drift_share"] == pytest.approx(len(result.drifted_columns) / 3)
    assert "| size |" in markdown_summary(result, "model:v1", "shifted.csv")


def test_a_batch_missing_a_column_is_refused_by_name(reference):
    _, schema = reference
    with pytest.raises(DataError, match="weight"):
        prepare_current(make_frame("regression").drop(columns=["weight"]), schema, "current.csv")


def test_an_empty_batch_is_refused(reference):
    _, schema = reference
    with pytest.raises(DataError, match="no rows"):
        prepare_current(make_frame("regression").iloc[:0], schema, "current.csv")


def test_sample_rows_is_capped_seeded_and_keeps_row_order():
    frame = make_frame("regression", rows=5000, seed=4)
    assert sample_rows(frame, 5000, seed=1) is frame
    sample = sample_rows(frame, 1000, seed=1)
    assert len(sample) == 1000
    assert sample.index.is_monotonic_increasing and sample.index.is_unique
    assert sample.index.equals(sample_rows(frame, 1000, seed=1).index)
    assert not sample.index.equals(sample_rows(frame, 1000, seed=2).index)


@pytest.fixture(scope="module")
def large():
    """40,000 training rows and a 50,000-row batch: `size` clearly shifted, `weight` and `color` stable."""
    features = make_frame("regression", rows=40_000, seed=5).drop(columns=["label"])
    schema = feature_schema(features)
    batch = make_frame("regression", rows=50_000, seed=6).drop(columns=["label"])
    batch["size"] += 0.5
    return conform(features, schema), prepare_current(batch, schema, "large.csv"), schema


def test_large_frames_are_compared_on_capped_samples_with_the_full_data_verdicts(large):
    reference, current, schema = large
    sampled, _ = compute_drift(
        reference, current, schema, threshold=0.3, options=MonitoringSettings(max_rows=10_000, sample_seed=3)
    )
    full, _ = compute_drift(reference, current, schema, threshold=0.3, options=MonitoringSettings())
    assert (sampled.n_reference, sampled.n_current) == (40_000, 50_000)
    assert (sampled.n_reference_compared, sampled.n_current_compared) == (10_000, 10_000)
    assert (full.n_reference_compared, full.n_current_compared) == (40_000, 50_000)
    assert sampled.drifted_columns == full.drifted_columns == ["size"]
    scores = {c.column: c.score for c in full.columns}
    for column in sampled.columns:
        assert column.score == pytest.approx(scores[column.column], abs=0.03)
    assert "random samples of 10000 reference and 10000 current rows" in markdown_summary(
        sampled, "model:v1", "large.csv"
    )


def test_configured_methods_and_thresholds_reach_evidently(large):
    reference, current, schema = large
    options = MonitoringSettings(max_rows=10_000, num_method="ks", num_threshold=0.01, cat_method="psi")
    result, _ = compute_drift(reference, current, schema, threshold=0.3, options=options)
    methods = {c.column: (c.method, c.threshold) for c in result.columns}
    assert methods["size"] == ("ks", 0.01)
    assert methods["color"][0] == "psi"
    assert result.drifted_columns == ["size"]


# Evidently's chi-squared test divides by the reference's zero count of the new category.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_data_quality_counts_missing_values_unseen_categories_and_ignored_columns(reference):
    frame, schema = reference
    batch = make_frame("regression", rows=300, seed=7)
    batch.loc[:9, "color"] = "purple"
    batch.loc[10:, "size"] = np.where(np.arange(len(batch) - 10) % 2 == 0, np.nan, batch.loc[10:, "size"])
    result, _ = compute_drift(frame, prepare_current(batch, schema, "dirty.csv"), schema, threshold=0.5)
    quality = result.quality
    assert quality.unseen_categories == {"color": ["purple"]} and quality.unseen_rows == {"color": 10}
    assert quality.missing["size"]["current"] == pytest.approx(145 / 300)
    assert quality.missing["size"]["reference"] == 0
    assert quality.ignored_columns == ["label"]
    summary = markdown_summary(result, "model:v1", "dirty.csv")
    assert "## Data quality" in summary and "`purple`" in summary and "ignored" in summary
    assert result.as_dict()["quality"]["unseen_rows"] == {"color": 10}


def preset_verdicts(result, report):
    """The per-column verdicts of Evidently's full DataDriftPreset report on the same samples."""
    return parse_snapshot(report.snapshot().dict(), result.threshold, result.n_reference, result.n_current)


def as_rows(result):
    return [
        (c.column, c.method, round(c.score, 9), c.threshold, c.drifted)
        for c in [*result.columns, result.prediction]
        if c is not None
    ]


# Evidently's chi-squared test divides by the reference's zero count of a new category.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize(
    ("rows", "options"),
    [
        (300, MonitoringSettings()),  # tests (KS, chi-squared) below 1,000 rows
        (5000, MonitoringSettings()),  # distances (Wasserstein, Jensen-Shannon) above
        (5000, MonitoringSettings(max_rows=10_000, num_method="ks", num_threshold=0.01, cat_method="psi")),
    ],
)
def test_the_verdict_is_the_one_of_evidently_s_full_preset(rows, options):
    """The check judges each column with the preset's test alone (DriftReport.column_drift); the full
    preset, built later for the HTML report, must agree on every column, method, score and threshold, with
    missing values, infinities, a new category and the prediction column in the frames."""
    features = make_frame("classification", rows=rows, seed=11).drop(columns=["label"])
    schema = feature_schema(features)
    reference = conform(features, schema)
    batch = make_frame("classification", rows=rows, seed=12)
    batch["size"] += 0.4
    batch.loc[:4, "color"] = "purple"
    batch.loc[5:9, "weight"] = np.inf
    batch.loc[10:30, "weight"] = np.nan
    current = prepare_current(batch, schema, "mixed.csv")
    predictions = np.where(np.arange(rows) % 3 == 0, "a", "b")
    result, report = compute_drift(
        reference.assign(_prediction=predictions),
        current.assign(_prediction=np.roll(predictions, 1)),
        schema,
        threshold=0.3,
        options=options,
        prediction_kind="category",
    )
    assert result.prediction is not None and result.drifted_columns
    assert as_rows(result) == as_rows(preset_verdicts(result, report))


def test_the_verdict_runs_no_report_and_the_report_is_built_when_asked_for(reference, monkeypatch):
    """The preset's Report (its figures, its tests run three times) is what a monitor run does after its
    retrain events are out, not before (docs/decisions.md#drift-verdict-first)."""
    from evidently import Report

    runs = []
    run = Report.run
    monkeypatch.setattr(Report, "run", lambda self, *a, **k: runs.append(1) or run(self, *a, **k))
    frame, schema = reference
    current = prepare_current(make_frame("regression", rows=300, seed=2), schema, "clean.csv")
    result, report = compute_drift(frame, current, schema, threshold=0.5)
    assert runs == [] and result.columns
    assert report.snapshot().dict()["metrics"] and runs == [1]


def test_a_column_with_no_values_in_the_batch_is_refused_by_name(reference):
    frame, schema = reference
    batch = make_frame("regression", rows=300, seed=8)
    batch["weight"] = np.inf
    with pytest.raises(DataError, match="'weight': every value in the current batch is missing or infinite"):
        compute_drift(frame, prepare_current(batch, schema, "empty.csv"), schema, threshold=0.5)
