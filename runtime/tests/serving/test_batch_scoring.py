"""Batch scoring with the production model: the output, the schema checks and the atomic write."""

import os

import pandas as pd
import pytest
from ml_lifecycle._internal.registry import aliases, store
from ml_lifecycle._internal.serving import batch_scoring
from ml_lifecycle._internal.tables import DataError, data_hash, feature_schema
from ml_lifecycle._internal.training.pipeline import build_pipeline

from ..conftest import clear_alias, make_frame

PARAMS = {"n_estimators": 20, "max_depth": 5, "min_samples_leaf": 2, "max_features": 0.8}


@pytest.fixture
def production(csv_settings, task_type):
    """A fitted model, registered and made production (by hand, as the promotion gate would)."""
    frame = make_frame(task_type, seed=3)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    schema = feature_schema(features)
    pipeline = build_pipeline(schema, "random_forest", task_type, PARAMS, seed=0).fit(features, labels)
    tag = store.save(
        csv_settings,
        pipeline,
        schema=schema,
        reference=features,
        metrics={},
        params=PARAMS,
        data_hash=data_hash(frame),
    )
    aliases.change(csv_settings, lambda record: record.history.append(aliases.entry(tag, "test")))
    yield tag
    clear_alias(csv_settings)


@pytest.fixture
def batch(tmp_path, task_type):
    """Rows to score: the features, plus an id column the output must keep."""
    frame = make_frame(task_type, rows=50, seed=11).drop(columns=["label"])
    frame.insert(0, "id", range(len(frame)))
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_output_is_the_input_plus_predictions_and_model_version(
    csv_settings, production, batch, tmp_path, task_type, suffix
):
    source, target = tmp_path / f"in{suffix}", tmp_path / "out" / f"scored{suffix}"
    batch.to_csv(source, index=False) if suffix == ".csv" else batch.to_parquet(source, index=False)
    result = batch_scoring.score_file(csv_settings, source, target)
    out = pd.read_csv(target) if suffix == ".csv" else pd.read_parquet(target)
    assert result.rows == len(out) == len(batch)
    assert out["id"].tolist() == batch["id"].tolist()
    assert (out["model_version"] == production).all()
    expected = store.load(production).pipeline.predict(batch.drop(columns=["id"]))
    if task_type == "classification":
        assert out["prediction"].tolist() == expected.tolist()
        probabilities = out[["probability_0", "probability_1"]]
        assert probabilities.sum(axis=1).round(6).eq(1).all()
    else:
        assert out["prediction"].to_numpy() == pytest.approx(expected)
    assert not [p for p in target.parent.iterdir() if p.name != target.name], "no temporary file is left"


def test_a_missing_column_is_named_with_the_file(csv_settings, production, batch, tmp_path):
    source = tmp_path / "in.csv"
    batch.drop(columns=["size"]).to_csv(source, index=False)
    with pytest.raises(DataError, match=r"in\.csv: column\(s\) \['size'\] missing"):
        batch_scoring.score_file(csv_settings, source, tmp_path / "out.csv")


def test_text_in_a_number_column_names_the_column_and_row(csv_settings, production, batch, tmp_path):
    source = tmp_path / "in.csv"
    batch.astype({"size": object}).assign(size=lambda f: f["size"].where(f.index != 2, "big")).to_csv(
        source, index=False
    )
    expected = r"in\.csv: column 'size' must hold numbers; rows \[3\] hold \['big'\]"
    with pytest.raises(DataError, match=expected):
        batch_scoring.score_file(csv_settings, source, tmp_path / "out.csv")


def test_an_unknown_category_is_named(csv_settings, production, batch, tmp_path):
    source = tmp_path / "in.csv"
    batch.assign(color="purple").to_csv(source, index=False)
    with pytest.raises(DataError, match=r"column 'color' has categories the model never saw: \['purple'\]"):
        batch_scoring.score_file(csv_settings, source, tmp_path / "out.csv")


def test_a_failed_write_leaves_the_previous_output_whole(
    csv_settings, production, batch, tmp_path, monkeypatch
):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    batch.to_csv(source, index=False)
    target.write_text("previous results\n")

    def half_then_crash(self, sink, **kwargs):
        sink.write(b"id,size\n1,")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        batch_scoring.score_file(csv_settings, source, target)
    assert target.read_text() == "previous results\n"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_without_a_production_model_nothing_is_written(csv_settings, batch, tmp_path):
    clear_alias(csv_settings)
    source = tmp_path / "in.csv"
    batch.to_csv(source, index=False)
    with pytest.raises(LookupError, match="no production model"):
        batch_scoring.score_file(csv_settings, source, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.usefixtures("prefect_server")
def test_the_predict_flow_scores_a_file(csv_settings, production, batch, tmp_path):
    from ml_lifecycle._internal.flows.predict import predict

    source = tmp_path / "in.csv"
    batch.to_csv(source, index=False)
    result = predict(input_path=str(source), output_path=str(tmp_path / "out.parquet"))
    assert result["model_version"] == production
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == len(batch)


def test_a_category_the_schema_does_not_list_takes_any_value(
    csv_settings, production, batch, tmp_path, monkeypatch
):
    """Above serving.max_enum_categories the service accepts any text for a column; so does batch scoring."""
    monkeypatch.setattr(csv_settings.serving, "max_enum_categories", 2)
    source = tmp_path / "in.csv"
    batch.assign(color="purple").to_csv(source, index=False)
    assert batch_scoring.score_file(csv_settings, source, tmp_path / "out.csv").rows == len(batch)
