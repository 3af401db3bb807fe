"""The BentoML service that serves the bound project's production model: `bentoml serve
<package>.service:Predictor`."""

from ._internal.serving.service import Predictor

__all__ = ["Predictor"]
