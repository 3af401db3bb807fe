"""Tables as every stage reads them: CSV or Parquet, the feature schema, and the content hash."""

import pytest
from ml_lifecycle._internal.tables import DataError, data_hash, feature_schema, read_table

from .conftest import make_frame


def test_schema_records_numbers_categories_and_missing_values(task_type):
    schema = feature_schema(make_frame(task_type).drop(columns=["label"]))
    assert schema["size"] == {"kind": "number", "nullable": False}
    assert schema["weight"] == {"kind": "number", "nullable": True}
    assert schema["color"] == {"kind": "category", "nullable": True, "categories": ["blue", "green", "red"]}


def test_parquet_is_read_like_csv(tmp_path, task_type):
    path = tmp_path / "train.parquet"
    make_frame(task_type).to_parquet(path)
    assert list(read_table(path).columns) == ["size", "weight", "color", "label"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("size,weight,color,label\n", "no data rows"),
    ],
)
def test_empty_files_are_refused_with_the_file_named(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_table(path)
    assert str(path) in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "nope.csv")


def test_data_hash_follows_the_content(task_type):
    frame = make_frame(task_type)
    assert data_hash(frame) == data_hash(frame.copy())
    changed = frame.copy()
    changed.loc[0, "size"] += 1
    assert data_hash(changed) != data_hash(frame)
