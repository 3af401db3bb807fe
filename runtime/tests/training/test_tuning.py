import dataclasses

import optuna
import pytest
from ml_lifecycle._internal.tables import data_hash, feature_schema
from ml_lifecycle._internal.training.tuning import (
    claimed_trials,
    fail_stale_trials,
    finished_trials,
    make_objective,
    make_spec,
    open_study,
    open_worker_study,
    plan_batches,
    run_shared_trials,
    run_trials,
)

from ..conftest import make_frame


def _study_and_objective(settings, frame):
    spec = make_spec(settings, data_hash(frame))
    features, labels = frame.drop(columns=["label"]), frame["label"]
    return spec, open_study(spec), make_objective(spec, features, labels, feature_schema(features))


def test_a_stopped_study_resumes_on_the_same_data(settings, task_type):
    frame = make_frame(task_type, seed=11)
    spec, study, objective = _study_and_objective(settings, frame)
    assert run_trials(study, objective, 2, deadline=None) == 2
    # A new process (here: a new study object) finds the two finished trials and adds to them.
    _, resumed, objective = _study_and_objective(settings, frame)
    assert resumed.study_name == spec.study_name
    assert finished_trials(resumed) == 2
    run_trials(resumed, objective, 1, deadline=None)
    assert finished_trials(open_study(spec)) == 3


def test_a_resumed_study_does_not_replay_its_first_trials(settings, task_type):
    frame = make_frame(task_type, seed=13)
    for _ in range(2):  # two runs of two trials each, as after a kill and a restart
        _, study, objective = _study_and_objective(settings, frame)
        run_trials(study, objective, 2, deadline=None)
    params = [t.params for t in sorted(study.trials, key=lambda t: t.number)]
    assert len(params) == 4
    assert params[2] != params[0] and params[3] != params[1]


def test_new_data_starts_a_fresh_study(settings, task_type):
    first = make_spec(settings, data_hash(make_frame(task_type, seed=1)))
    second = make_spec(settings, data_hash(make_frame(task_type, seed=2)))
    assert first.study_name != second.study_name


def test_the_same_seed_suggests_the_same_trials(settings, task_type):
    frame = make_frame(task_type, seed=5)
    spec = make_spec(settings, data_hash(frame))
    features, labels = frame.drop(columns=["label"]), frame["label"]
    objective = make_objective(spec, features, labels, feature_schema(features))
    studies = [open_study(spec, storage=optuna.storages.InMemoryStorage()) for _ in range(2)]
    for study in studies:
        run_trials(study, objective, 3, deadline=None)
    assert [t.params for t in studies[0].trials] == [t.params for t in studies[1].trials]
    assert [t.value for t in studies[0].trials] == [t.value for t in studies[1].trials]


def test_a_past_deadline_runs_no_trial(settings, task_type):
    frame = make_frame(task_type, seed=7)
    _, study, objective = _study_and_objective(settings, frame)
    assert run_trials(study, objective, 5, deadline=0.0) == 0


def test_trials_are_batched_per_task():
    assert plan_batches(25, 10) == [10, 10, 5]
    assert plan_batches(0, 10) == []
    assert plan_batches(-3, 10) == []


def test_the_target_counts_the_trials_other_workers_add_to_the_study(settings, task_type):
    """Another process tunes the same study while this one runs: together they stop at the target."""
    frame = make_frame(task_type, seed=17)
    spec, study, objective = _study_and_objective(settings, frame)
    other = open_study(spec)  # another worker: its own study object on the same storage
    calls = []

    def busy_objective(trial):
        if not calls:  # while this worker's first trial runs, the other one finishes three
            run_trials(other, objective, 3, deadline=None)
        calls.append(trial.number)
        return objective(trial)

    run_trials(study, busy_objective, 5, deadline=None, target=5)
    assert finished_trials(open_study(spec)) == 5
    assert len(calls) == 2


def test_a_study_at_its_target_runs_no_trial(settings, task_type):
    frame = make_frame(task_type, seed=19)
    _, study, objective = _study_and_objective(settings, frame)
    run_trials(study, objective, 2, deadline=None)
    assert run_trials(study, objective, 10, deadline=None, target=2) == 0


# Tuning spread over workers (flows/tune.py): each worker is its own study object on the shared storage.


def _workers(settings, task_type, seed):
    frame = make_frame(task_type, seed=seed)
    spec, _, objective = _study_and_objective(settings, frame)
    return spec, [open_worker_study(spec, spec.seed + worker) for worker in range(2)], objective


def test_workers_sharing_a_study_stop_at_exactly_its_target(settings, task_type):
    spec, (first, second), objective = _workers(settings, task_type, seed=23)
    calls = []

    def busy_objective(trial):
        if not calls:  # while the first worker's first trial runs, the second one tunes what it can
            calls.append(run_shared_trials(second, objective, 5, deadline=None, max_trials=10, worker=1))
        return objective(trial)

    ran = run_shared_trials(first, busy_objective, 5, deadline=None, max_trials=10, worker=0)
    study = open_study(spec)
    assert finished_trials(study) == 5
    assert (ran, calls) == (1, [4])  # the second worker left the place the first one held
    assert sorted(t.user_attrs["worker"] for t in study.trials) == [0, 1, 1, 1, 1]


def test_a_trial_two_workers_create_for_the_last_place_is_closed_without_running(settings, task_type):
    spec, (first, second), objective = _workers(settings, task_type, seed=29)
    run_shared_trials(first, objective, 2, deadline=None, max_trials=1)
    asked = first.ask

    def racing_ask(*args, **kwargs):
        second.ask()  # the other worker claims the last place between this one's check and its trial
        return asked(*args, **kwargs)

    first.ask = racing_ask
    ran = []
    assert run_shared_trials(first, lambda trial: ran.append(trial) or 0.5, 2, None, max_trials=5) == 0
    assert ran == []
    surplus = open_study(spec).trials[-1]
    assert surplus.state == optuna.trial.TrialState.FAIL and surplus.user_attrs["surplus"] is True
    assert claimed_trials(open_study(spec)) == 2  # one finished, one running on the other worker


def test_pruned_trials_count_as_finished_and_a_failing_trial_fails_the_worker(settings, task_type):
    spec, (worker, _), _ = _workers(settings, task_type, seed=31)

    def pruned(trial):
        trial.report(0.5, 0)
        raise optuna.TrialPruned()

    assert run_shared_trials(worker, pruned, 2, deadline=None, max_trials=5) == 2
    assert finished_trials(open_study(spec)) == 2

    def broken(trial):
        raise ValueError("bad trial")

    with pytest.raises(ValueError, match="bad trial"):
        run_shared_trials(worker, broken, 3, deadline=None, max_trials=5)
    assert open_study(spec).trials[-1].state == optuna.trial.TrialState.FAIL
    assert claimed_trials(open_study(spec)) == 2


def test_each_worker_draws_its_own_trials_and_the_same_ones_on_every_run(settings, task_type):
    frame = make_frame(task_type, seed=37)
    spec, _, objective = _study_and_objective(settings, frame)
    params = {}
    for run, seed in (("a", spec.seed), ("b", spec.seed), ("other worker", spec.seed + 1)):
        study = open_worker_study(dataclasses.replace(spec, study_name=f"{spec.study_name}-{run}"), seed)
        run_shared_trials(study, objective, 2, deadline=None, max_trials=2)
        params[run] = [t.params for t in study.trials]
    assert params["a"] == params["b"]
    assert params["other worker"] != params["a"]


def test_a_trial_left_running_by_a_stopped_worker_is_closed_as_failed(settings, task_type):
    spec, (worker, _), _ = _workers(settings, task_type, seed=41)
    left = worker.ask()  # the worker was killed during this trial
    assert claimed_trials(worker) == 1
    assert fail_stale_trials(open_study(spec)) == [left.number]
    assert claimed_trials(worker) == 0
