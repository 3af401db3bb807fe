"""Hyperparameter search with Optuna: a TPE sampler, a median pruner and a resumable study.

The study name is derived from the data hash, the model family and the seed: a killed run on the same data
picks its study up where it stopped, while new data starts a fresh study instead of mixing old scores in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import optuna
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold

from ..config import Settings
from ..project import user_module
from .metrics import Metric, primary_metric
from .pipeline import build_pipeline

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# Trials that hold a place in a shared study's count: finished, or running on some worker.
CLAIMED = (*FINISHED, optuna.trial.TrialState.RUNNING)


@dataclass(frozen=True)
class TuningSpec:
    """Everything a batch of trials needs, small enough to hand to a Prefect task."""

    study_name: str
    storage: str
    family: str
    task_type: str
    seed: int
    cv_folds: int

    @property
    def scorer(self) -> Metric:
        return primary_metric(self.task_type)

    @property
    def metric(self) -> str:
        return self.scorer.name

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return self.scorer.direction


def make_spec(settings: Settings, data_hash: str) -> TuningSpec:
    family, task_type, seed = settings.tuning.model_family, settings.data.task_type, settings.data.seed
    return TuningSpec(
        study_name=f"{settings.model_name}-{family}-{data_hash}-seed{seed}",
        storage=settings.optuna_storage,
        family=family,
        task_type=task_type,
        seed=seed,
        cv_folds=settings.tuning.cv_folds,
    )


def open_study(spec: TuningSpec, storage: str | optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the study, or load it to resume. The sampler's seed moves on with the finished trials, so a
    resumed study does not replay the random start-up trials it already ran; a fresh one starts at `seed`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial drowns the flow's own log
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=spec.storage if storage is None else storage,
        direction=spec.direction,
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        load_if_exists=True,
    )
    done = finished_trials(study)
    if done:
        study.sampler = optuna.samplers.TPESampler(seed=spec.seed + done)
    return study


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def make_objective(spec: TuningSpec, features: pd.DataFrame, labels: pd.Series, schema) -> Callable:
    """Cross-validated score; each fold is reported so the pruner can stop a poor trial early."""
    splitter_cls = StratifiedKFold if spec.task_type == "classification" else KFold
    folds = list(
        splitter_cls(n_splits=spec.cv_folds, shuffle=True, random_state=spec.seed).split(features, labels)
    )

    def objective(trial: optuna.Trial) -> float:
        params = user_module("model").suggest_params(trial, spec.family, spec.task_type)
        template = build_pipeline(schema, spec.family, spec.task_type, params, spec.seed)
        metric = spec.scorer
        scores = []
        for step, (train_idx, valid_idx) in enumerate(folds):
            pipeline = clone(template).fit(features.iloc[train_idx], labels.iloc[train_idx])
            scores.append(metric.of(pipeline, features.iloc[valid_idx], labels.iloc[valid_idx]))
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    return objective


def run_trials(
    study: optuna.Study, objective: Callable, n_trials: int, deadline: float | None, target: int | None = None
) -> int:
    """Run up to n_trials, stopping at the deadline (a time.time() value) or once the study holds `target`
    finished trials, whoever ran them; returns how many trials the study gained.

    The target is checked before the first trial and after each one with Optuna's MaxTrialsCallback, which
    counts the trials of every worker on the study's storage, so a study shared by several processes stops
    at the target instead of each process running its own n_trials."""
    before = finished_trials(study)
    callbacks = []
    if target is not None:
        n_trials = min(n_trials, target - before)
        callbacks.append(optuna.study.MaxTrialsCallback(target, states=FINISHED))
    timeout = None if deadline is None else max(deadline - time.time(), 0.0)
    if n_trials > 0 and (timeout is None or timeout > 0):
        study.optimize(
            objective, n_trials=n_trials, timeout=timeout, gc_after_trial=False, callbacks=callbacks
        )
    return finished_trials(study) - before


def open_worker_study(spec: TuningSpec, sampler_seed: int) -> optuna.Study:
    """The study as one of several workers opens it: a sampler seeded for this worker, so its random draws
    are its own and the same on every run, and TPE's constant liar, so workers running at once do not all
    sample around the same best trial. The pruner is the study's own and sees every worker's trials."""
    study = open_study(spec)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)
    return study


def run_shared_trials(
    study: optuna.Study,
    objective: Callable,
    target: int,
    deadline: float | None,
    max_trials: int,
    worker: int = 0,
) -> int:
    """Run trials of a study that other workers tune at the same time, until it holds `target` trials
    finished or running, at most max_trials here, or until the deadline; returns how many this worker
    finished.

    Exact however the workers interleave: a worker claims a trial by creating it, and Optuna numbers trials
    in the order they are created. When two workers create one at the same moment for the last place, the
    later one finds `target` claimed trials numbered below it: it is closed as FAIL, marked `surplus`,
    without running, so the study ends with exactly `target` finished trials. Pruned trials count as
    finished, as in run_trials."""
    ran = 0
    while ran < max_trials and (deadline is None or time.time() < deadline):
        if claimed_trials(study) >= target:
            break
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        if claimed_trials(study, before=trial.number) >= target:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
        ran += 1
    return ran


def claimed_trials(study: optuna.Study, before: int | None = None) -> int:
    """Trials finished or running, all of them or those numbered below `before`."""
    trials = study.get_trials(deepcopy=False, states=CLAIMED)
    return len(trials) if before is None else sum(1 for t in trials if t.number < before)


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Close the trials still running as FAIL, returning their numbers. Only for when no worker runs: a
    worker that was killed leaves its trial running, which would hold a place in the count for ever."""
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    return stale


def plan_batches(remaining: int, per_task: int) -> list[int]:
    """Split the remaining trials into batches of at most per_task, one Prefect task each."""
    return [min(per_task, remaining - start) for start in range(0, max(remaining, 0), per_task)]
