"""The library's checks on a project's own code (dataset.py, features.py, model.py, settings.toml).

A project's contract test (tests/test_contract.py) runs them, so a change in those files that training or
serving would trip over fails in `pytest`, in seconds, with a message naming the file and the fix, instead
of in a flow run an hour later. Each check raises AssertionError or ValueError and returns what it built.

Nothing is imported here until a check runs: the project's package must be imported (bound) first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ._internal.config import Settings

__all__ = [
    "check_dataset",
    "check_feature_steps",
    "check_model_family",
    "check_primary_metric",
    "check_settings",
    "check_table",
    "example_frame",
    "model_families",
]


def example_frame(task_type: str, rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """Mixed data a user might bring: numbers, a text category, missing values in both, and a `label`
    column (classes 0/1 or a number) that depends strongly on `size` and `color`."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    size = rng.normal(size=rows)
    weight = rng.normal(size=rows)
    color = rng.choice(["red", "green", "blue"], size=rows)
    signal = 2 * size + (color == "red") + rng.normal(scale=0.3, size=rows)
    frame = pd.DataFrame({"size": size, "weight": weight, "color": color})
    frame.loc[rng.random(rows) < 0.1, "weight"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "color"] = np.nan  # as pandas reads a gap in a file
    frame["label"] = (signal > 0).astype(int) if task_type == "classification" else signal
    return frame


def _task(task_type: str | None) -> str:
    if task_type is not None:
        return task_type
    from ._internal.config import get_settings

    return get_settings().data.task_type


def model_families(task_type: str | None = None) -> list[str]:
    """The families of model.py's MODEL_FAMILIES that do `task_type` (the settings' task by default): a
    contract test parametrized by them covers a family added to the table without a line of test code.
    Settings that cannot be read give every family of the table."""
    from ._internal.config import SettingsError
    from ._internal.project import user_module

    families = user_module("model").MODEL_FAMILIES
    try:
        task = _task(task_type)
    except SettingsError:
        # Every family then: pytest collects the tests and each reports the settings' error, instead of
        # stopping at collection with no test run.
        return sorted(families)
    return sorted(name for name, entry in families.items() if entry.factory(task) is not None)


def check_model_family(family: str, task_type: str | None = None, *, seed: int = 0) -> float:
    """The family fits example_frame() (numbers, a category, missing values) with parameters drawn from its
    own search space, inside the pipeline training builds, and beats a constant guess on its own rows; every
    family the settings may name must, since any of them can be the one tuned. Returns the primary metric.

    Your features.py steps are left out: the example frame has none of your columns (check_feature_steps
    runs them on your data)."""
    import optuna
    from sklearn.pipeline import Pipeline

    from ._internal.project import user_module
    from ._internal.tables import feature_schema
    from ._internal.training.metrics import class_text, primary_metric
    from ._internal.training.pipeline import build_pipeline

    task = _task(task_type)
    model = user_module("model")
    model.family(family, task)  # a family not in the table for this task: model.py's own error
    frame = example_frame(task, seed=seed)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    where = f"model.py, MODEL_FAMILIES[{family!r}]"
    try:
        params = model.suggest_params(trial, family, task)
    except Exception as exc:
        raise AssertionError(
            f"{where}: its search_space(trial) raised {exc!r}; fix the search space"
        ) from exc
    try:
        pipeline = build_pipeline(feature_schema(features), family, task, params, seed=seed)
        if pipeline.steps[0][0] == "features":
            pipeline = Pipeline(pipeline.steps[1:])
        pipeline.fit(features, labels)
    except Exception as exc:
        raise AssertionError(
            f"{where}: the {task} estimator failed to build or fit with parameters {params} from its search "
            f"space ({exc!r}); make the search space's names the estimator's arguments, or fix the factory"
        ) from exc
    metric = primary_metric(task)
    value = metric.of(pipeline, features, labels)
    truth = labels.map(class_text) if metric.classifies else labels
    baseline = metric.score(truth, _constant_output(labels, task))
    # The signal is strong: a fitted model must beat a constant guess clearly on its own training rows (by a
    # tenth of the guess's score; by 0.1 where the guess scores 0, as r2's does).
    if metric.improvement(value, baseline) <= 0.1 * (abs(baseline) or 1.0):
        raise AssertionError(
            f"{where}: with parameters {params} the {task} model scores {metric.name} {value:.3f} on its own "
            f"training rows, hardly better than a constant guess ({baseline:.3f}); check the factory passes "
            "the parameters to the estimator, and the search space's ranges"
        )
    return value


def _constant_output(labels: pd.Series, task_type: str) -> pd.DataFrame | np.ndarray:
    """What a model that learnt nothing outputs: each class's share, or the mean."""
    import numpy as np
    import pandas as pd

    from ._internal.training.metrics import class_text

    if task_type != "classification":
        return np.full(len(labels), float(labels.mean()))
    shares = labels.map(class_text).value_counts(normalize=True).sort_index()
    return pd.DataFrame(np.tile(shares.to_numpy(), (len(labels), 1)), columns=list(shares.index))


def check_settings(family: str | None = None) -> Settings:
    """The settings load (settings.toml and the <PACKAGE>_... variables), with `family` as
    tuning.model_family when given: the settings refuse a family model.py's table does not hold for the
    task, so each family meant to be chosen must pass."""
    from ._internal.config import Settings, get_settings

    if family is None:
        return Settings()
    tuning = get_settings().tuning.model_dump() | {"model_family": family}
    settings = Settings(tuning=tuning)
    if settings.tuning.model_family != family:
        raise AssertionError(f"settings.toml: tuning.model_family stays {settings.tuning.model_family!r}")
    return settings


def check_primary_metric(task_type: str | None = None) -> str:
    """model.py's PRIMARY_METRIC names a metric the library knows for the task (the settings' by default):
    tuning, the promotion gate and the monitor all judge by it. Returns its name."""
    from ._internal.training.metrics import primary_metric

    return primary_metric(_task(task_type)).name


def check_table(frame: pd.DataFrame, target: str, task_type: str, source: str = "the table") -> pd.DataFrame:
    """`frame` passes the checks training runs before it fits anything (a target column, enough rows and
    classes, no identifiers posing as categories, finite numbers); raises a DataError (a ValueError) naming
    `source` and the column. Returns the frame with its columns as the model sees them (snake_case)."""
    from ._internal.tables import normalize_column, normalize_columns
    from ._internal.training.validation import validate

    return validate(normalize_columns(frame, source), normalize_column(target), task_type, source).frame


def check_dataset(settings: Settings | None = None) -> pd.DataFrame:
    """dataset.py's load_frame(settings) returns one table with data.target_column that passes the checks
    training runs (check_table); a DataError names the file and the column. Returns the checked table."""
    from ._internal.config import get_settings
    from ._internal.training.validation import load_dataset

    dataset = load_dataset(settings or get_settings())
    if dataset.features.empty:
        raise AssertionError(
            f"dataset.py: load_frame returned only the target column {dataset.target!r}; return the "
            "feature columns with it"
        )
    return dataset.frame


def check_feature_steps(settings: Settings | None = None, rows: int = 500) -> pd.DataFrame:
    """features.py's feature_steps() fit and transform the first `rows` rows of your training data, each
    returning a DataFrame that keeps every raw column: the service asks each request for the raw columns and
    computes the rest with these steps. Returns the transformed rows."""
    import pandas as pd

    from ._internal.config import get_settings
    from ._internal.project import user_module
    from ._internal.training.validation import load_dataset

    dataset = load_dataset(settings or get_settings())
    frame, labels = dataset.features.head(rows), dataset.labels.head(rows)
    raw = list(frame.columns)
    for name, step in user_module("features").feature_steps():
        try:
            frame = step.fit(frame, labels).transform(frame)
        except Exception as exc:
            raise AssertionError(
                f"features.py: feature step {name!r} failed on your training data: {exc}"
            ) from exc
        if not isinstance(frame, pd.DataFrame):
            raise AssertionError(
                f"features.py: feature step {name!r} returned {type(frame).__name__}, not a DataFrame; "
                "return the frame with your columns added (X.assign(...))"
            )
        dropped = [c for c in raw if c not in frame.columns]
        if dropped:
            raise AssertionError(
                f"features.py: feature step {name!r} dropped the raw columns {dropped}; a step adds columns "
                "and keeps the others (drop a raw column in dataset.py instead)"
            )
    return frame
