"""The BentoML service of this project: `bentoml serve <package>.service:Predictor`, which
`python -m <package> serve` runs."""

from ml_lifecycle.service import Predictor

__all__ = ["Predictor"]
