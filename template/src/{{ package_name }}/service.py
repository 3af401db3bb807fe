"""The BentoML service of this project: `bentoml serve <package>.service:Predictor`, which
`python -m <package> serve` runs. `Predictor` is built when BentoML first asks for it (it reads the settings
and the production model then), so importing this module reads nothing."""

from typing import TYPE_CHECKING, Any

import ml_lifecycle.service

if TYPE_CHECKING:
    from ml_lifecycle.service import Predictor

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        return ml_lifecycle.service.Predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
