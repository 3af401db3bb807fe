"""The BentoML service: `bentoml serve <package>.service:Predictor` (`python -m <package> serve`)."""

from ml_lifecycle.service import Predictor

__all__ = ["Predictor"]
