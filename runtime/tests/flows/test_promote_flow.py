"""The train and promote flows when the data changes shape: what a user sees in the run log and the UI."""

from typing import Any

import pytest
from ml_lifecycle._internal.flows.promote import promote_model
from ml_lifecycle._internal.flows.train import train
from ml_lifecycle._internal.registry import aliases
from prefect.artifacts import Artifact

from ..conftest import clear_alias, make_frame, use_training_file

pytestmark = pytest.mark.usefixtures("prefect_server")


def gate_artifact() -> str:
    artifact: Any = Artifact.get("promotion-gate")  # typed as maybe a coroutine; called sync it is not
    assert artifact is not None
    return str(artifact.data)


def test_a_schema_change_waits_for_an_explicit_promotion(tmp_path, monkeypatch, task_type, caplog):
    frame = make_frame(task_type)
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    settings = use_training_file(monkeypatch, path)
    clear_alias(settings)
    first = train(n_trials=2, reason="test")
    assert aliases.production_tag(settings) == first

    frame.drop(columns=["weight"]).to_csv(path, index=False)  # the column is gone from the source
    changed = train(n_trials=2, reason="test")
    assert aliases.production_tag(settings) == first
    expected = f"promote --tag {changed} --accept-schema-change"
    assert f"Not promoted {changed}: schema changed (column 'weight' is gone)" in caplog.text
    assert expected in gate_artifact() and "Schema change: not accepted" in gate_artifact()

    result = promote_model(tag=changed, accept_schema_change=True)
    assert result["passed"] and aliases.production_tag(settings) == changed
    assert "Schema change: accepted explicitly" in gate_artifact()
    clear_alias(settings)
