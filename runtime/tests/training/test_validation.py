"""The checks every training table passes before anything is trained."""

import numpy as np
import pytest
from ml_lifecycle._internal.tables import DataError
from ml_lifecycle._internal.training.holdout import split
from ml_lifecycle._internal.training.validation import load_dataset, min_class_rows, validate
from my_ml_project import dataset

from ..conftest import make_frame, use_training_file


def test_the_loaded_table_becomes_features_and_a_target(csv_settings):
    dataset = load_dataset(csv_settings)
    assert dataset.target == "label"
    assert dataset.source == str(csv_settings.data_path)
    assert list(dataset.features.columns) == ["size", "weight", "color"]


def test_column_names_as_a_file_writes_them_become_snake_case_the_target_setting_too(
    tmp_path, monkeypatch, task_type
):
    """Request fields and metric labels need identifiers: the columns and data.target_column are normalised
    alike, so a target written as the file writes it is still found."""
    path = tmp_path / "train.csv"
    make_frame(task_type).rename(columns={"weight": "Weight (kg)", "label": "Label"}).to_csv(
        path, index=False
    )
    loaded = load_dataset(use_training_file(monkeypatch, path, target="Label"))
    assert loaded.target == "label"
    assert list(loaded.features.columns) == ["size", "weight_kg", "color"]


def test_a_missing_target_column_is_named(task_type):
    frame = make_frame(task_type).drop(columns=["label"])
    with pytest.raises(DataError, match="target column 'label' not found"):
        validate(frame, "label", task_type, "data.csv")


def test_regression_needs_a_numeric_target():
    frame = make_frame("regression").assign(label="high")
    with pytest.raises(DataError, match="must be numeric for regression"):
        validate(frame, "label", "regression", "data.csv")


def test_a_loader_that_returns_no_table_says_what_to_return(monkeypatch, settings):
    monkeypatch.setattr(dataset, "load_frame", lambda settings: None)
    with pytest.raises(DataError, match="dataset.load_frame returned NoneType, not a pandas DataFrame"):
        load_dataset(settings)


def test_an_identifier_column_is_refused_naming_it_and_the_fix(task_type):
    frame = make_frame(task_type).assign(customer_id=lambda f: [f"C-{i:05d}" for i in range(len(f))])
    with pytest.raises(
        DataError, match=r"column 'customer_id' looks like an identifier: 240 different"
    ) as err:
        validate(frame, "label", task_type, "data.csv")
    assert "drop it in dataset.py" in str(err.value) and str(err.value).startswith("data.csv: ")


def test_a_column_with_many_categories_that_repeat_is_kept(task_type):
    frame = make_frame(task_type).assign(zip_code=lambda f: [f"Z{i % 100}" for i in range(len(f))])
    assert "zip_code" in validate(frame, "label", task_type, "data.csv").features.columns


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e39])
def test_infinite_or_too_large_feature_values_are_refused_naming_the_rows(task_type, value):
    frame = make_frame(task_type)
    frame.loc[[3, 7], "size"] = value
    with pytest.raises(DataError, match=r"column 'size' has infinite or too large values .* rows \[3, 7\]"):
        validate(frame, "label", task_type, "data.csv")


def test_an_infinite_regression_target_is_refused():
    frame = make_frame("regression")
    frame.loc[5, "label"] = np.inf
    with pytest.raises(DataError, match=r"column 'label' has infinite or too large values .* rows \[5\]"):
        validate(frame, "label", "regression", "data.csv")


@pytest.mark.parametrize("members", [1, 2, 4])
def test_a_class_with_too_few_rows_is_refused_naming_it(members):
    frame = make_frame("classification")
    frame.loc[: members - 1, "label"] = 7
    with pytest.raises(DataError, match=rf"fewer than 5 rows: 7 \({members}\)\. Each class needs 5"):
        validate(frame, "label", "classification", "data.csv", test_size=0.2, cv_folds=3)


@pytest.mark.parametrize(("test_size", "cv_folds"), [(0.2, 3), (0.1, 2), (0.3, 5), (0.5, 2)])
def test_the_smallest_allowed_class_is_in_the_holdout_and_in_every_fold(csv_settings, test_size, cv_folds):
    needed = min_class_rows(test_size, cv_folds)
    frame = make_frame("classification", rows=400)
    frame.loc[: needed - 1, "label"] = 7
    dataset = validate(frame, "label", "classification", "data.csv", test_size=test_size, cv_folds=cv_folds)
    csv_settings.data.test_size = test_size
    parts = split(dataset, csv_settings)
    assert (parts.test_y == 7).sum() >= 1
    assert (parts.train_y == 7).sum() >= cv_folds


def test_a_continuous_target_under_classification_is_refused():
    frame = make_frame("regression")
    with pytest.raises(DataError, match=r"holds continuous numbers .* set task_type = \"regression\""):
        validate(frame, "label", "classification", "data.csv")


def test_whole_numbers_stored_as_floats_are_classes():
    frame = make_frame("classification").astype({"label": "float64"})
    assert validate(frame, "label", "classification", "data.csv").labels.nunique() == 2
