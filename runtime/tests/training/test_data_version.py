"""The DVC version a model records: read from the pointer file `dvc add` writes, checked against the data."""

import pytest
from ml_lifecycle._internal.training.data_version import dvc_version, md5_of


def track(data, content: str) -> None:
    """Write `data` and the pointer `dvc add` would write for it (DVC 3: md5 of the file's bytes)."""
    data.write_text(content)
    pointer = (
        f"outs:\n- md5: {md5_of(data)}\n  size: {data.stat().st_size}\n  hash: md5\n  path: {data.name}\n"
    )
    data.with_name(data.name + ".dvc").write_text(pointer)


def test_a_file_dvc_tracks_gives_its_hash(tmp_path):
    data = tmp_path / "train.csv"
    track(data, "a,b\n1,2\n")
    version = dvc_version(data)
    assert version["dvc_md5"] == md5_of(data) and version["dvc_matches"] is True
    assert version["dvc_file"].endswith("train.csv.dvc")


def test_a_file_changed_since_dvc_add_is_told(tmp_path):
    data = tmp_path / "train.csv"
    track(data, "a,b\n1,2\n")
    data.write_text("a,b\n1,3\n")
    assert dvc_version(data)["dvc_matches"] is False


def test_an_untracked_file_has_no_version(tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n")
    assert dvc_version(data) == {}


def test_a_broken_pointer_is_named_with_the_fix(tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n")
    data.with_name("train.csv.dvc").write_text("outs: [")
    with pytest.raises(ValueError, match=r"train.csv.dvc: not a DVC pointer to train.csv .*run `dvc add"):
        dvc_version(data)
