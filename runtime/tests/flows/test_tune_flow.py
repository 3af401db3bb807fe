"""The tune flow, one worker of a study spread over the work pool, and the train run's checks before it
spreads one (the generator's tests run two workers on a real pool against PostgreSQL)."""

import optuna
import pytest
from ml_lifecycle._internal.config import ENV_PREFIX, get_settings
from ml_lifecycle._internal.flows.prepare import prepare
from ml_lifecycle._internal.flows.train import train
from ml_lifecycle._internal.flows.tune import tune
from ml_lifecycle._internal.flows.workers import WorkersUnavailable
from prefect import flow

pytestmark = pytest.mark.usefixtures("prefect_server")


@flow
def train_runs_study() -> str:
    """The study a train run starting now would tune (its data and labelled traffic, as a worker's)."""
    return prepare().spec.study_name


def test_a_worker_tunes_the_train_runs_study_up_to_its_target(csv_settings, monkeypatch, tmp_path):
    # A study of its own: other tests train on the same rows.
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__STORAGE", f"sqlite:///{tmp_path / 'studies.db'}")
    get_settings.cache_clear()
    study_name = train_runs_study()
    assert tune(study_name=study_name, n_trials=3, worker=1, sampler_seed=43) == 3
    study = optuna.load_study(study_name=study_name, storage=get_settings().optuna_storage)
    assert [t.user_attrs["worker"] for t in study.trials] == [1, 1, 1]
    # Another worker arriving once the study is complete runs nothing.
    assert tune(study_name=study_name, n_trials=3, worker=0, sampler_seed=42) == 0


def test_a_worker_whose_rows_give_another_study_refuses_to_tune_it(csv_settings):
    with pytest.raises(RuntimeError, match="not the train run's stale-study: the data or the labelled"):
        tune(study_name="stale-study", n_trials=3)


def test_spreading_tuning_without_a_tune_deployment_fails_before_any_work(csv_settings, monkeypatch):
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__WORKERS", "2")
    # Never reached: the check comes first.
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__STORAGE", "postgresql+psycopg://optuna@127.0.0.1:9/optuna")
    get_settings.cache_clear()
    with pytest.raises(WorkersUnavailable, match="tuning.deployment: 'tune/tune-dev' is not deployed"):
        train(n_trials=3, reason="test")
