"""A model card per registered model: what it learned from, how it was chosen, how it scores, what carries
it, what the gate said, and what it was built with.

Written once when the model is registered, beside it in the project's store
(`models/<name>/<version>.card.json`, create-only like the model), shown as the train run's `model-card`
markdown artifact, and served as JSON by the service's `GET /model`. The gate's verdicts are added later
(`record_verdict`, a compare-and-swap of the card), so a card says whether its model became production.

The service reads cards (`load`); it must not import the training stack, so what only building a card
needs (scikit-learn's permutation importance, the metrics, the gate's group scores) is imported in `build`.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from importlib import metadata as distributions
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from ..storage import MODELS, StorageError, open_storage

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from ..config import Settings
    from ..training.tuning import TuningSpec

    Rows = tuple[pd.DataFrame, pd.Series]

EXTENSION = ".card.json"
# The distributions whose versions a card records, besides Python's.
LIBRARIES = ("ml-lifecycle", "scikit-learn", "bentoml", "optuna", "prefect", "pandas", "numpy")
# Permutation importance: holdout rows used at most, repeats per column. Enough to rank the columns, cheap
# next to tuning (a few hundred predictions of the holdout's size).
IMPORTANCE_ROWS = 2000
IMPORTANCE_REPEATS = 5
# The most important columns the markdown page lists (the JSON holds every column).
IMPORTANCE_SHOWN = 15


class Importance(BaseModel):
    """How much the primary metric drops when one raw input column is shuffled (mean and spread over the
    repeats); near zero: the model does not rely on it."""

    column: str
    drop: float
    std: float


class ModelCard(BaseModel):
    tag: str
    created: datetime
    task_type: str
    model_family: str
    target_column: str
    primary_metric: str
    direction: str
    # Each part of the training rows: part, source, rows, hash (and DVC's md5 when DVC tracks the file).
    data_sources: list[dict[str, Any]] = Field(default_factory=list)
    study_name: str = ""
    cv_folds: int = 0
    seed: int = 0
    trials: int = 0
    # Optuna's distributions as its own JSON gives them: {"name": "FloatDistribution", "attributes": {...}}
    search_space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    best_cv_score: float | None = None
    holdout_rows: int = 0
    holdout_metrics: dict[str, float] = Field(default_factory=dict)
    # The newest labelled production rows, held out by time; 0 rows when the run had none.
    recent_rows: int = 0
    recent_metrics: dict[str, float] = Field(default_factory=dict)
    recent_note: str = ""
    # registry.sensitive_column and the primary metric per group of it on the holdout (as the gate scores).
    fairness_column: str = ""
    groups: list[dict[str, Any]] = Field(default_factory=list)
    importance: list[Importance] = Field(default_factory=list)
    importance_note: str = ""
    # The gate's verdicts on this model, oldest first (GateResult.as_dict(), whether it was promoted, when),
    # and a person's decision on it in promotion.mode approve or suggest (flows/promote.py record_decision).
    verdicts: list[dict[str, Any]] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        """The card as strict JSON: a metric that could not be computed (NaN) is null."""
        return self.model_dump_json(indent=2).encode()


def key(tag: str) -> str:
    """The card's key, beside the model's (store.model_key): models/<name>/<version>.card.json."""
    name, _, version = tag.partition(":")
    return f"{MODELS}/{name}/{version}{EXTENSION}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = distributions.version(name)
        except distributions.PackageNotFoundError:
            found[name] = "not installed"
    return found


def search_space(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Every parameter the finished trials drew and the distribution it was drawn from (the union over
    trials: a family's search space may ask for a parameter only for some values of another)."""
    import optuna

    space: dict[str, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        for name, distribution in trial.distributions.items():
            space.setdefault(name, json.loads(optuna.distributions.distribution_to_json(distribution)))
    return dict(sorted(space.items()))


def permutation_importance(
    pipeline: Any, rows: Rows, task_type: str, seed: int
) -> tuple[list[Importance], str]:
    """scikit-learn's permutation importance of the primary metric on (at most IMPORTANCE_ROWS of) the
    holdout, by raw input column (the pipeline takes raw rows, so a shuffled column is shuffled before any
    encoding); most important first, and a line saying how it was measured."""
    from sklearn.inspection import permutation_importance as permuted

    from ..training.metrics import primary_metric

    features, labels = rows
    if len(features) > IMPORTANCE_ROWS:
        features = features.sample(IMPORTANCE_ROWS, random_state=seed)
        labels = labels.loc[features.index]
    metric = primary_metric(task_type)

    def scorer(estimator: Any, x: pd.DataFrame, y: pd.Series) -> float:
        return metric.improvement(metric.of(estimator, x, y), 0.0)  # greater is better, as scikit-learn needs

    try:
        result = permuted(
            pipeline, features, labels, scoring=scorer, n_repeats=IMPORTANCE_REPEATS, random_state=seed
        )
    except ValueError as exc:  # the metric cannot score these rows (one class only for ROC AUC)
        return [], f"not computed: {metric.name} cannot score the {len(features)} holdout rows ({exc})"
    found = [
        Importance(column=str(column), drop=float(mean), std=float(std))
        for column, mean, std in zip(
            features.columns, result.importances_mean, result.importances_std, strict=True
        )
    ]
    note = (
        f"drop of {metric.name} when the column is shuffled, on {len(features)} holdout rows, "
        f"{IMPORTANCE_REPEATS} repeats, seed {seed}"
    )
    return sorted(found, key=lambda item: item.drop, reverse=True), note


def build(
    settings: Settings,
    tag: str,
    pipeline: Any,
    *,
    spec: TuningSpec,
    study: optuna.Study,
    params: dict[str, Any],
    holdout: Rows,
    metrics: dict[str, float],
    sources: list[dict[str, Any]] | None = None,
    recent: Rows | None = None,
) -> ModelCard:
    """The card of a model just fitted on the training rows and scored on `holdout` (`metrics`); `recent`
    is the recent slice of labelled traffic, when the run had one."""
    from ..training.metrics import primary_metric, score
    from ..training.tuning import finished_trials
    from .promotion import group_scores

    metric = primary_metric(spec.task_type)
    recent_metrics: dict[str, float] = {}
    recent_rows, recent_note = 0, "no labelled production rows held out"
    if recent is not None and not recent[0].empty:
        recent_rows = len(recent[0])
        try:
            recent_metrics, recent_note = score(pipeline, *recent, spec.task_type), ""
        except ValueError as exc:  # one class only among the recent labels: ROC AUC cannot score them
            recent_note = f"not scored: {exc}"
    column = settings.registry.sensitive_column
    groups = group_scores(pipeline, *holdout, column, spec.task_type) if column else []
    importance, importance_note = permutation_importance(pipeline, holdout, spec.task_type, spec.seed)
    try:
        best_cv: float | None = float(study.best_value)
    except ValueError:  # no completed trial
        best_cv = None
    return ModelCard(
        tag=tag,
        created=datetime.now(UTC),
        task_type=spec.task_type,
        model_family=spec.family,
        target_column=settings.data.target_column,
        primary_metric=metric.name,
        direction=metric.direction,
        data_sources=list(sources or []),
        study_name=spec.study_name,
        cv_folds=spec.cv_folds,
        seed=spec.seed,
        trials=finished_trials(study),
        search_space=search_space(study),
        parameters=dict(params),
        best_cv_score=best_cv,
        holdout_rows=len(holdout[0]),
        holdout_metrics=dict(metrics),
        recent_rows=recent_rows,
        recent_metrics=recent_metrics,
        recent_note=recent_note,
        fairness_column=column,
        groups=groups,
        importance=importance,
        importance_note=importance_note,
        versions=versions(),
    )


def save(settings: Settings, card: ModelCard) -> bool:
    """Write the card beside its model, create-only: True when written, False when the model has one
    already (a card is never overwritten; the verdicts are added by record_verdict)."""
    return open_storage(settings).create(key(card.tag), card.to_json(), content_type="application/json")


def parse(data: bytes, where: str) -> ModelCard:
    try:
        return ModelCard.model_validate_json(data)
    except ValidationError as exc:
        raise StorageError(
            f"{where} is not a model card ({exc.error_count()} problem(s), first: "
            f"{exc.errors()[0]['msg']}); delete it (the model keeps working without one)"
        ) from None


def load(settings: Settings, tag: str) -> ModelCard | None:
    """The model's card, or None for a model registered before cards (or whose card was deleted)."""
    storage = open_storage(settings)
    data = storage.read_bytes(key(tag))
    return None if data is None else parse(data, storage.url_of(key(tag)))


def record_verdict(settings: Settings, tag: str, verdict: dict[str, Any]) -> bool:
    """Add a gate's verdict to the model's card (a compare-and-swap of the card, so two gates judging the
    model at once both land); False when the model has no card."""
    storage = open_storage(settings)
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **verdict}

    def add(data: bytes | None) -> bytes | None:
        if data is None:
            return None
        card = parse(data, storage.url_of(key(tag)))
        return card.model_copy(update={"verdicts": [*card.verdicts, entry]}).to_json()

    return storage.update(key(tag), add)


def _cell(value: Any) -> str:
    """A value in a markdown table cell: numbers rounded, pipes escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4g}"  # NaN is the one value unequal to itself
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows),
    ]


def _space(entry: dict[str, Any] | None) -> str:
    """An Optuna distribution as a reader says it: `float in [0.01, 10], log`, `one of a, b`."""
    if not entry:
        return "fixed"
    name, attributes = entry.get("name", ""), entry.get("attributes", {})
    if "choices" in attributes:
        return "one of " + ", ".join(str(choice) for choice in attributes["choices"])
    kind = "int" if name.startswith("Int") else "float"
    text = f"{kind} in [{attributes.get('low')}, {attributes.get('high')}]"
    if attributes.get("log"):
        text += ", log"
    step = attributes.get("step")
    if step is not None and not (kind == "int" and step == 1):
        text += f", step {step}"
    return text


def markdown(card: ModelCard) -> str:
    """The card as a page of the Prefect UI: a summary, then one section per kind of fact."""
    lines = [
        f"# Model card: `{card.tag}`",
        "",
        f"{card.task_type.capitalize()} of `{card.target_column}` by {card.model_family}, registered "
        f"{card.created:%Y-%m-%d %H:%M} UTC; primary metric {card.primary_metric} "
        f"({'higher' if card.direction == 'maximize' else 'lower'} is better).",
        "",
        "## Data",
        "",
        *_table(
            ["part", "source", "rows", "hash", "DVC md5"],
            [
                [s.get("part"), s.get("source"), s.get("rows"), s.get("hash"), s.get("dvc_md5", "")]
                for s in card.data_sources
            ],
        ),
        "",
        "## Search space and chosen parameters",
        "",
        f"{card.trials} finished trial(s) of study `{card.study_name}` ({card.cv_folds}-fold "
        f"cross-validation, seed {card.seed}); best cross-validated {card.primary_metric} "
        f"{_cell(card.best_cv_score)}.",
        "",
        *_table(
            ["parameter", "searched", "chosen"],
            [
                [name, _space(card.search_space.get(name)), card.parameters.get(name)]
                for name in sorted(set(card.search_space) | set(card.parameters))
            ],
        ),
        "",
        "## Metrics",
        "",
        *_table(
            ["metric", f"holdout ({card.holdout_rows} rows)", f"recent slice ({card.recent_rows} rows)"],
            [[name, value, card.recent_metrics.get(name)] for name, value in card.holdout_metrics.items()],
        ),
    ]
    if card.recent_note:
        lines += ["", f"Recent slice: {card.recent_note}."]
    if card.fairness_column:
        lines += ["", f"## Per group of `{card.fairness_column}` (holdout)", ""]
        lines += _table(
            ["group", "rows", card.primary_metric],
            [[g.get("group"), g.get("rows"), g.get(card.primary_metric)] for g in card.groups],
        )
    lines += ["", "## Feature importance", "", f"Permutation importance: {card.importance_note}.", ""]
    shown = card.importance[:IMPORTANCE_SHOWN]
    lines += _table(["column", "drop", "std"], [[i.column, i.drop, i.std] for i in shown])
    if len(card.importance) > len(shown):
        lines += ["", f"{len(card.importance) - len(shown)} more column(s) in the card's JSON."]
    lines += ["", "## Gate verdict", ""]
    if card.verdicts:
        latest = card.verdicts[-1]
        # "promoted" since promotion.mode: a verdict that passed the gate waits for a person in approve mode
        outcome = "promoted" if latest.get("promoted", latest.get("passed")) else "not promoted"
        against = f"`{latest['production']}`" if latest.get("production") else "no production model"
        lines += [f"**{outcome}** at {latest.get('at')} against {against}: {latest.get('reason')}."]
        if len(card.verdicts) > 1:
            lines += ["", f"{len(card.verdicts)} verdicts in all; the card's JSON holds each."]
    else:
        lines += ["Not judged yet: the gate's verdict is added to the card when it runs (`promotion-gate`)."]
    lines += ["", "## Versions", ""]
    lines += _table(["library", "version"], [[name, version] for name, version in card.versions.items()])
    return "\n".join(lines) + "\n"
