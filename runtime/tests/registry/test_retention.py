"""The model store's retention, on a real (throwaway) BentoML store."""

import bentoml
import pytest
from ml_lifecycle._internal.config import Settings
from ml_lifecycle._internal.registry import aliases, retention, store
from ml_lifecycle._internal.tables import data_hash, feature_schema
from ml_lifecycle._internal.training.pipeline import build_pipeline

from ..conftest import clear_alias, make_frame

PARAMS = {"n_estimators": 5, "max_depth": 3, "min_samples_leaf": 2, "max_features": 0.8}


@pytest.fixture
def isolated(settings, monkeypatch):
    """Settings under a model name of their own, so retention here never touches other tests' models."""
    monkeypatch.setattr(Settings, "model_name", property(lambda self: "retention_test"))
    yield settings
    for model in bentoml.models.list("retention_test"):
        bentoml.models.delete(model.tag)
    clear_alias(settings)


def register(settings, task_type: str) -> str:
    frame = make_frame(task_type, rows=60)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    schema = feature_schema(features)
    pipeline = build_pipeline(schema, "random_forest", task_type, PARAMS, seed=0).fit(features, labels)
    return store.save(
        settings,
        pipeline,
        schema=schema,
        reference=features,
        metrics={},
        params=PARAMS,
        data_hash=data_hash(frame),
    )


def stored() -> set[str]:
    return {str(model.tag) for model in bentoml.models.list("retention_test")}


def test_old_models_go_but_production_and_its_rollback_history_stay(isolated, task_type, monkeypatch):
    tags = [register(isolated, task_type) for _ in range(7)]  # oldest first
    # two old models were production, one after the other
    aliases.change(
        isolated, lambda record: record.history.extend(aliases.entry(tags[t], "test") for t in (0, 2))
    )
    monkeypatch.setattr(isolated.registry, "keep_models", 2)
    deleted = retention.prune(isolated)
    assert set(deleted) == {tags[1], tags[3], tags[4]}
    assert stored() == {tags[0], tags[2], tags[5], tags[6]}
    assert retention.prune(isolated) == []


def test_keep_models_zero_keeps_every_model(isolated, task_type, monkeypatch):
    tags = {register(isolated, task_type) for _ in range(3)}
    monkeypatch.setattr(isolated.registry, "keep_models", 0)
    assert retention.prune(isolated) == [] and stored() == tags
