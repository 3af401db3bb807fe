"""The BentoML service that serves the bound project's production model: `bentoml serve
<package>.service:Predictor`.

`Predictor` is built when first asked for, which `bentoml serve|build` does at start-up: building reads the
settings and the production model's feature schema (its request types), so importing this module reads
nothing, and asking for `Predictor` with no model promoted fails saying what to do."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import bentoml

    Predictor: bentoml.Service[Any]

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        return import_module("ml_lifecycle._internal.serving.service").build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
