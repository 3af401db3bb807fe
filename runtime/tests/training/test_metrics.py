"""model.py's PRIMARY_METRIC as the library reads it, and the metrics' own arithmetic."""

import numpy as np
import pandas as pd
import pytest
from ml_lifecycle._internal.config import SettingsError, get_settings
from ml_lifecycle._internal.training.metrics import METRICS, compare, primary_metric
from my_ml_project import model
from sklearn.metrics import roc_auc_score


def test_an_unknown_primary_metric_is_refused_naming_model_py_and_the_choices(monkeypatch, task_type):
    """Refused when the settings load, before a flow trains a model it could not judge."""
    monkeypatch.setitem(model.PRIMARY_METRIC, task_type, "auc_roc")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"model.py's PRIMARY_METRIC names 'auc_roc'.*choose one of \["):
        get_settings()


def test_a_direction_that_is_not_the_metrics_own_is_refused(monkeypatch):
    """An older model.py wrote (name, direction): ("r2", "minimize") would judge a better model worse."""
    monkeypatch.setitem(model.PRIMARY_METRIC, "regression", ("r2", "minimize"))
    with pytest.raises(ValueError, match=r"r2 is to maximize; write just the name \('r2'\)"):
        primary_metric("regression")
    monkeypatch.setitem(model.PRIMARY_METRIC, "regression", ("r2", "maximize"))
    assert primary_metric("regression").direction == "maximize"


def test_the_rank_based_roc_auc_is_scikit_learns_ties_included():
    """ROC AUC for two classes is computed from ranks (fast enough to bootstrap); it must equal
    scikit-learn's, ties included, and a paired comparison of a model with itself is exactly even."""
    rng = np.random.default_rng(0)
    truth = rng.choice(["no", "yes"], size=200)
    positive = np.round(rng.random(200), 1)  # coarse: many ties
    proba = pd.DataFrame({"no": 1 - positive, "yes": positive})
    assert METRICS["roc_auc"].score(truth, proba) == pytest.approx(roc_auc_score(truth == "yes", positive))
    even = compare(METRICS["roc_auc"], truth, proba, proba)
    assert (even.difference, even.low, even.high) == (0.0, 0.0, 0.0)
