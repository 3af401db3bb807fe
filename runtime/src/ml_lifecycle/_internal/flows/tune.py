"""Tuning spread over workers: the tune flow is one worker of a study that several flow runs tune at once on
a shared database; the train run's side, which submits them to the work pool and waits, is
flows/workers.py.

More machines tune faster by running more workers on the pool: each tune run is a process of its own,
wherever a worker starts it (docs/scaling.md). SQLite cannot be shared that way, so config.py refuses
tuning.workers > 1 with a SQLite tuning.storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ..config import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna


@task(cache_policy=NO_CACHE)
def tune_shared_batch(
    study: optuna.Study, objective: Callable, target: int, deadline: float | None, size: int, worker: int
) -> int:
    """A batch of at most `size` trials, one task, as in the train flow; none past the study's target."""
    from ..training import tuning

    return tuning.run_shared_trials(study, objective, target, deadline, size, worker)


@flow(name="tune", log_prints=True)
def tune(
    study_name: str, n_trials: int, worker: int = 0, sampler_seed: int = 0, deadline: float | None = None
) -> int:
    """Tune the train run's study, with the other workers, until it has n_trials finished trials or the
    deadline (a time.time() value) passes; returns how many trials this worker finished."""
    # Imported here: the training stack is slow to import, and a worker imports this module before the run
    # starts (docs/decisions.md#import-times).
    from ..training import tuning
    from .prepare import prepare

    prepared = prepare()
    if prepared.spec.study_name != study_name:
        raise RuntimeError(
            f"this worker's training rows give study {prepared.spec.study_name}, not the train run's "
            f"{study_name}: the data or the labelled traffic changed since the train run started "
            "(or the worker's settings differ); train again"
        )
    study = tuning.open_worker_study(prepared.spec, sampler_seed)
    parts = prepared.parts
    objective = tuning.make_objective(prepared.spec, parts.train_x, parts.train_y, prepared.schema)
    size, ran = get_settings().tuning.trials_per_task, 0
    while True:
        batch = tune_shared_batch(study, objective, n_trials, deadline, size, worker)
        ran += batch
        if batch < size:
            break
    finished = tuning.finished_trials(study)
    print(f"Worker {worker} (sampler seed {sampler_seed}) ran {ran} trial(s); {finished} of {n_trials} done")
    return ran
