"""How a model is scored and two models compared: one Metric type that tuning, the gate, the monitor and the
watch after rollout all ask, so they agree on the name, the direction and the computation.

model.py's PRIMARY_METRIC names one metric of METRICS per task; primary_metric() is how every stage reads
it. A metric scores a model's *output* against the truth: the class probabilities (a frame with one column
per class, named by the class's text) for classification, the predicted values for regression. So the
monitor scores what the service logged with the same function the gate uses on a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from ..project import user_module

Direction = Literal["maximize", "minimize"]
# A model's output: class probabilities (rows x classes, columns named by class text) or predicted values.
Output = pd.DataFrame | np.ndarray
BOOTSTRAP_ROUNDS = 1000


def _roc_auc(truth: np.ndarray, proba: np.ndarray, classes: list[str]) -> float:
    """One-vs-rest macro ROC AUC for more than two classes; the second class is positive for two, where it
    is computed from ranks (Mann-Whitney U, equal to scikit-learn's, ties included), which is fast enough to
    be bootstrapped a thousand times."""
    if len(set(truth)) < 2:
        raise ValueError("ROC AUC needs two classes among the labels")
    if len(classes) > 2:
        return float(roc_auc_score(truth, proba, multi_class="ovr", average="macro", labels=classes))
    positive = truth == classes[1]
    ranks = rankdata(proba[:, 1])
    n_pos = int(positive.sum())
    n_neg = len(truth) - n_pos
    if n_neg == 0:
        raise ValueError("ROC AUC needs two classes among the labels")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _predicted(proba: np.ndarray, classes: list[str]) -> np.ndarray:
    return np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]


@dataclass(frozen=True)
class Metric:
    """A metric: its name, whether bigger is better, the task it scores and how (truth, output) -> float."""

    name: str
    direction: Direction
    task_type: Literal["classification", "regression"]
    # (truth, probabilities or predictions as an array, the classes of the probabilities' columns) -> value
    compute: Callable[[np.ndarray, np.ndarray, list[str]], float]

    def score(self, truth: Any, output: Output) -> float:
        values, classes = _values(output)
        return float(
            self.compute(np.asarray(truth, dtype=object if self.classifies else float), values, classes)
        )

    @property
    def classifies(self) -> bool:
        return self.task_type == "classification"

    def improvement(self, value: float, reference: float) -> float:
        """How much better `value` is than `reference`, positive when better, whatever the direction."""
        return value - reference if self.direction == "maximize" else reference - value

    def worse_than(self, value: float, threshold: float) -> bool:
        return self.improvement(value, threshold) < 0

    def output(self, pipeline: Any, features: pd.DataFrame) -> Output:
        """What the metric scores, from a fitted pipeline: probabilities by class text, or predictions."""
        if not self.classifies:
            return np.asarray(pipeline.predict(features), dtype=float)
        return pd.DataFrame(
            pipeline.predict_proba(features), columns=[class_text(c) for c in pipeline.classes_]
        )

    def of(self, pipeline: Any, features: pd.DataFrame, labels: pd.Series) -> float:
        truth = labels.map(class_text) if self.classifies else labels
        return self.score(truth, self.output(pipeline, features))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("roc_auc", "maximize", "classification", _roc_auc),
        Metric("accuracy", "maximize", "classification", lambda t, p, c: np.mean(t == _predicted(p, c))),
        Metric(
            "f1_macro",
            "maximize",
            "classification",
            lambda t, p, c: f1_score(t, _predicted(p, c), average="macro"),
        ),
        Metric("rmse", "minimize", "regression", lambda t, p, c: root_mean_squared_error(t, p)),
        Metric("mae", "minimize", "regression", lambda t, p, c: mean_absolute_error(t, p)),
        Metric("r2", "maximize", "regression", lambda t, p, c: r2_score(t, p)),
    )
}


def primary_metric(task_type: str) -> Metric:
    """The metric model.py's PRIMARY_METRIC names for `task_type`; a clear error for a name not in METRICS
    (an older model.py's (name, direction) pair is read too, when the direction is the metric's own)."""
    PRIMARY_METRIC = user_module("model").PRIMARY_METRIC  # the user's file, read when asked

    chosen = PRIMARY_METRIC.get(task_type)
    name, direction = chosen if isinstance(chosen, tuple) else (chosen, None)
    allowed = sorted(n for n, m in METRICS.items() if m.task_type == task_type)
    metric = METRICS.get(str(name))
    if metric is None or metric.task_type != task_type:
        raise ValueError(f"model.py's PRIMARY_METRIC names {name!r} for {task_type}; choose one of {allowed}")
    if direction is not None and direction != metric.direction:
        raise ValueError(
            f"model.py's PRIMARY_METRIC gives {name!r} the direction {direction!r}, but {name} is to "
            f"{metric.direction}; write just the name ({name!r})"
        )
    return metric


def score(pipeline: Any, features: pd.DataFrame, labels: pd.Series, task_type: str) -> dict[str, float]:
    """Every metric of the task on the holdout (the holdout-metrics table)."""
    truth = labels.map(class_text) if task_type == "classification" else labels
    metrics = [metric for metric in METRICS.values() if metric.task_type == task_type]
    output = metrics[0].output(pipeline, features)  # one prediction serves every metric of the task
    return {metric.name: metric.score(truth, output) for metric in metrics}


def class_text(value: Any) -> str:
    """A label as the text of a class: 1, 1.0, "1" and "1.0" (a CSV column with a gap reads as floats) are
    all "1", so labels match the model's classes however the labels file was written."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


@dataclass(frozen=True)
class Comparison:
    """Two models scored with one metric on the same rows: a gate's slice or the watch's performance.

    `difference` is how much better `first` is than `second` (positive: better, in the metric's direction);
    `low` and `high` bound it with `confidence`, from a paired bootstrap over the rows."""

    metric: str
    rows: int
    first: float
    second: float
    difference: float
    low: float
    high: float
    confidence: float

    def surely_worse(self, by: float = 0.0) -> bool:
        """`first` is worse than `second` by more than `by`, with the comparison's confidence."""
        return self.high < -by

    def interval(self) -> str:
        return f"{self.difference:+.4f} ({self.confidence:.0%} interval {self.low:+.4f} to {self.high:+.4f})"


def compare(
    metric: Metric,
    truth: Any,
    first: Output,
    second: Output,
    confidence: float = 0.95,
    seed: int = 0,
    rounds: int = BOOTSTRAP_ROUNDS,
) -> Comparison:
    """Paired bootstrap of the metric's difference over the same rows: resample rows, score both models on
    each resample, take the difference's two-sided interval. Written here rather than with
    scipy.stats.bootstrap, which turns the whole interval into NaN when one resample has a single class
    (ROC AUC cannot score it); such resamples are left out here."""
    truth = np.asarray(truth, dtype=object if metric.classifies else float)
    rows = len(truth)
    value_1, value_2 = metric.score(truth, first), metric.score(truth, second)
    (values_1, classes_1), (values_2, classes_2) = _values(first), _values(second)
    picks = np.random.default_rng(seed).integers(0, rows, size=(rounds, rows))
    differences = np.full(rounds, np.nan)
    for i, pick in enumerate(picks):
        try:
            differences[i] = metric.improvement(
                metric.compute(truth[pick], values_1[pick], classes_1),
                metric.compute(truth[pick], values_2[pick], classes_2),
            )
        except ValueError:  # one class only in this resample
            continue
    tail = (1 - confidence) / 2 * 100
    if np.isnan(differences).all():
        low = high = float("nan")
    else:
        low, high = (float(v) for v in np.nanpercentile(differences, [tail, 100 - tail]))
    return Comparison(
        metric.name, rows, value_1, value_2, metric.improvement(value_1, value_2), low, high, confidence
    )


def _values(output: Output) -> tuple[np.ndarray, list[str]]:
    """An output as an array, and its classes (the probabilities' columns; none for predictions)."""
    if isinstance(output, pd.DataFrame):
        return output.to_numpy(dtype=float), [str(c) for c in output.columns]
    return np.asarray(output, dtype=float), []
