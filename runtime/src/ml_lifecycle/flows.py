"""The Prefect flows a project deploys (prefect.yaml) and runs; each reads the bound project's settings."""

from ._internal.flows.monitor import monitor
from ._internal.flows.predict import predict
from ._internal.flows.promote import promote_model, rollback_model
from ._internal.flows.retrain import retrain
from ._internal.flows.train import train
from ._internal.flows.tune import tune

__all__ = ["monitor", "predict", "promote_model", "retrain", "rollback_model", "train", "tune"]
