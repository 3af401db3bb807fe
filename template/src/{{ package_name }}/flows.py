"""The project's Prefect flows, as prefect.yaml deploys them: the library's flows, run for this project."""

from ml_lifecycle.flows import monitor, predict, promote_model, retrain, rollback_model, train, tune

__all__ = ["monitor", "predict", "promote_model", "retrain", "rollback_model", "train", "tune"]
