"""The model store's retention: every training run registers a model, so old ones are deleted from this
process's BentoML store, which is a cache of the project's store (store.py).

Kept: the newest `registry.keep_models` models, every model in the production alias record's history
(production and what `rollback` walks back to) and the newest rolled-back ones, however old. BentoML has no
retention of its own. A model deleted here stays in the project's store, so a promotion or rollback that
needs it at the same moment imports it again (store.ensure_local) instead of failing.
"""

from __future__ import annotations

import bentoml

from ..config import Settings
from . import aliases
from .promotion import RETIRED_COMPARED


def prune(settings: Settings) -> list[str]:
    """Delete the models retention does not keep; returns their tags (none when keep_models is 0)."""
    keep = settings.registry.keep_models
    if keep == 0:
        return []
    record = aliases.read(settings)
    # the newest rolled-back models too: the gate compares candidates with them (promotion.retired_twin)
    retired = [entry["tag"] for entry in record.rolled_back[-RETIRED_COMPARED:]]
    protected = {entry["tag"] for entry in record.history} | set(retired)
    models = sorted(
        bentoml.models.list(settings.model_name),
        key=lambda model: (model.info.creation_time, str(model.tag)),
        reverse=True,
    )
    doomed = [str(model.tag) for model in models[keep:] if str(model.tag) not in protected]
    for tag in doomed:
        bentoml.models.delete(tag)
    return doomed
