"""The Prefect flows a project deploys (prefect.yaml) and runs; each reads the bound project's settings.

Each flow is imported when first asked for: a worker running `retrain` imports the training stack, not
Evidently's, and one running `monitor` the other way round."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._internal.flows.deploy_checks import require_shared_storage
    from ._internal.flows.monitor import monitor
    from ._internal.flows.predict import predict
    from ._internal.flows.promote import promote_model, rollback_model
    from ._internal.flows.retrain import retrain
    from ._internal.flows.train import train
    from ._internal.flows.tune import tune

__all__ = [
    "monitor",
    "predict",
    "promote_model",
    "require_shared_storage",
    "retrain",
    "rollback_model",
    "train",
    "tune",
]

_WHERE = {
    "monitor": "monitor",
    "predict": "predict",
    "promote_model": "promote",
    "require_shared_storage": "deploy_checks",
    "retrain": "retrain",
    "rollback_model": "promote",
    "train": "train",
    "tune": "tune",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"ml_lifecycle._internal.flows.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
