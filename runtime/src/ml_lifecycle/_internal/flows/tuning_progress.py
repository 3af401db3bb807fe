"""Tuning's progress in the Prefect UI while it runs: the `tuning-progress` progress artifact, the share of
the study's trials finished, with the best value so far in its description. Updated by the train run after
each batch of trials, and while it waits for the workers when tuning is spread over them (flows/workers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

if TYPE_CHECKING:
    import optuna

KEY = "tuning-progress"


class TuningProgress:
    """One run's progress artifact over a study that is to reach `n_trials` finished trials."""

    def __init__(self, study: optuna.Study, n_trials: int, metric: str) -> None:
        self.study, self.n_trials, self.metric = study, n_trials, metric
        self.finished = self._finished()
        self.artifact: UUID = create_progress_artifact(
            self.percent(), key=KEY, description=self.description()
        )

    def _finished(self) -> int:
        from ..training.tuning import finished_trials

        return finished_trials(self.study)

    def percent(self) -> float:
        """Finished trials as a percentage of the target, at most 100 (a resumed study may hold more)."""
        return 100.0 if self.n_trials <= 0 else min(100.0, 100.0 * self.finished / self.n_trials)

    def description(self) -> str:
        done = f"{self.finished} of {self.n_trials} trials finished"
        try:
            best = self.study.best_trial
        except ValueError:  # no completed trial yet (none run, or every one pruned)
            return f"{done}; no completed trial yet"
        return f"{done}; best {self.metric} so far {best.value:.4f} (trial {best.number})"

    def update(self) -> None:
        """Read the study again; the artifact changes only when a trial finished since the last update."""
        finished = self._finished()
        if finished == self.finished:
            return
        self.finished = finished
        update_progress_artifact(self.artifact, self.percent(), description=self.description())
