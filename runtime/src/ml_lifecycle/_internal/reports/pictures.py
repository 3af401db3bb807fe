"""Pictures of what a run found, shown in the Prefect UI: the tuning history and the parameter importances
(Optuna's own plots), the holdout curve (scikit-learn's ROC or predicted-vs-actual display), drift per
column and the watch after rollout's before/after.

Each picture is one function from data to PNG bytes, so it is tested without Prefect or a store;
`show_picture` keeps the PNG under reports/ in the project's store and makes the markdown artifact the UI
shows it in (docs/decisions.md#pictures-in-the-prefect-ui says why markdown with the image inline). A
picture is a nice-to-have: one that fails to draw or store is a warning in the run's log, never a failed
training or monitor run.

matplotlib is imported inside the functions, with the Agg backend (PNG files, no display; Prefect runs
tasks in threads, where an interactive backend fails): only training and monitoring draw, and the service
never imports this module (runtime/tests/serving/test_service_imports.py).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..config import Settings
    from ..monitoring.drift import ColumnDrift

# The artifact keys, shared with the UI test and the docs (runtime/docs/ui.md).
TUNING_HISTORY = "tuning-history"
PARAMETER_IMPORTANCES = "parameter-importances"
HOLDOUT_CURVE = "holdout-curve"
DRIFT_PER_COLUMN = "drift-per-column"
ROLLOUT_WATCH = "rollout-watch"  # the picture leads the watch's own artifact (flows/monitor.py)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZE = (8.0, 4.5)  # inches; 800 x 450 pixels at DPI: readable in the artifact page, small as base64
DPI = 100
DRIFTED, STABLE, MUTED = "#d62728", "#1f77b4", "#999999"
MAX_COLUMNS = 40  # drift bars in one picture (drifted first); the drift-report table lists every column


# --- drawing ------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    """pyplot on the Agg backend (Optuna's plots draw through pyplot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(height: float = SIZE[1]) -> Figure:
    """A figure outside pyplot's registry: nothing to close, nothing shared between threads."""
    _pyplot()  # sets the backend for scikit-learn's displays, which import pyplot
    from matplotlib.figure import Figure

    return Figure(figsize=(SIZE[0], height), dpi=DPI, layout="constrained")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _note(axes: Axes, text: str) -> None:
    """A message where the plot would be: why there is nothing to draw yet."""
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=axes.transAxes, color=MUTED)


@contextmanager
def _optuna_axes() -> Iterator[Callable[[Axes], bytes]]:
    """Optuna's matplotlib plots are marked experimental (a warning on every call) and draw on a pyplot
    figure of their own: quiet the warning, and close the figure once it is saved."""
    import optuna

    plt = _pyplot()
    drawn: list[Any] = []

    def save(axes: Axes) -> bytes:
        figure = axes.get_figure()
        drawn.append(figure)
        figure.set_size_inches(*SIZE)
        figure.set_layout_engine("constrained")
        return _png(figure)

    # rc_context: Optuna's plots switch pyplot to its ggplot style for the whole process; undone after.
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            yield save
        finally:
            for figure in drawn:
                plt.close(figure)


def tuning_history(study: optuna.Study, metric: str) -> bytes:
    """Optuna's optimization history: each finished trial's cross-validated `metric` and the best so far."""
    from optuna.visualization.matplotlib import plot_optimization_history

    with _optuna_axes() as save, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "There are no complete trials": the note says it
        axes = plot_optimization_history(study, target_name=metric)
        if not _completed(study):
            _note(axes, "no completed trial yet")
        _title(axes, f"Tuning history: {metric}, {_completed(study)} completed trial(s)")
        return save(axes)


def parameter_importances(study: optuna.Study, metric: str, seed: int = 0) -> bytes:
    """Optuna's parameter importances (fANOVA, seeded so a rerun draws the same picture); with fewer than
    two completed trials there is nothing to compare, and the picture says so."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    completed = _completed(study)
    title = f"Parameter importances for {metric} ({completed} completed trial(s))"
    if completed < 2:  # Optuna would draw equal shares for every parameter: say why there are none
        figure = _figure()
        axes = figure.subplots()
        _note(axes, f"{completed} completed trial(s): importances need two or more")
        axes.set_title(title)
        return _png(figure)
    with _optuna_axes() as save:
        axes = plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=seed), target_name=metric
        )
        _title(axes, title)
        return save(axes)


def _title(axes: Axes, title: str) -> None:
    """Our title in place of Optuna's (which it sets on the left)."""
    for where in ("left", "center", "right"):
        axes.set_title("", loc=where)
    axes.set_title(title)


def _completed(study: optuna.Study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def holdout_curve(
    truth: Sequence[Any], output: pd.DataFrame | np.ndarray, task_type: str, title: str
) -> bytes:
    """The model on its holdout, with scikit-learn's displays: the ROC curve for classification (`output`
    the class probabilities, one column per class text; one-vs-rest per class beyond two classes),
    predicted against actual values for regression (`output` the predictions). Rows with a missing truth
    or output are left out, and the title says how many."""
    from sklearn.metrics import PredictionErrorDisplay, RocCurveDisplay

    figure = _figure()
    axes = figure.subplots()
    if task_type == "classification":
        probabilities = pd.DataFrame(output).reset_index(drop=True)
        frame = probabilities.assign(_truth=pd.Series(list(truth), dtype=object).astype(str))
        kept = frame[pd.Series(list(truth)).notna().to_numpy() & probabilities.notna().all(axis=1).to_numpy()]
        classes = [str(c) for c in probabilities.columns]
        # Two classes: the second is positive, as the roc_auc metric has it; more: one curve per class.
        positives = classes[1:] if len(classes) == 2 else classes
        drawn = 0
        for positive in positives:
            is_positive = (kept["_truth"] == positive).to_numpy()
            if 0 < is_positive.sum() < len(kept):
                RocCurveDisplay.from_predictions(
                    is_positive,
                    kept[positive].to_numpy(dtype=float),
                    name=f"class {positive}",
                    ax=axes,
                    plot_chance_level=drawn == 0,
                )
                drawn += 1
        if not drawn:
            _note(axes, "the holdout has a single class: no ROC curve")
        positive = f"class {positives[0]}" if len(positives) == 1 else "each class against the rest"
        axes.set_xlabel(f"False positive rate ({positive})")
        axes.set_ylabel("True positive rate")
        kind, rows = "ROC curve", len(kept)
    else:
        values = pd.DataFrame(
            {"truth": pd.to_numeric(pd.Series(list(truth)), errors="coerce"), "pred": np.ravel(output)}
        )
        kept = values.dropna()
        if len(kept):
            PredictionErrorDisplay.from_predictions(
                kept["truth"].to_numpy(),
                kept["pred"].to_numpy(dtype=float),
                kind="actual_vs_predicted",
                subsample=None,
                ax=axes,
            )
        else:
            _note(axes, "no row with both a value and a prediction")
        kind, rows = "predicted vs actual", len(kept)
    dropped = len(list(truth)) - rows
    axes.set_title(
        f"{title}: {kind} on {rows} holdout rows" + (f" ({dropped} with gaps left out)" if dropped else "")
    )
    return _png(figure)


def drift_per_column(
    columns: Sequence[ColumnDrift], drift_share: float, threshold: float, title: str = "Drift per column"
) -> bytes:
    """Each column's drift score (the monitor's, from Evidently) as a bar, with the column's own threshold
    as a tick: a test's score is a p-value (drift below its threshold), a distance's a distance (drift at or
    above it), so the colour says the verdict. The title has the share of drifted columns against
    monitoring.drift_threshold, the share that asks for retraining. At most MAX_COLUMNS bars."""
    everything = sorted(columns, key=lambda c: (not c.drifted, c.column))
    ordered = everything[:MAX_COLUMNS]  # a picture stays readable, and small; the table has them all
    figure = _figure(height=max(2.5, 1.2 + 0.35 * len(ordered)))
    axes = figure.subplots()
    if not ordered:
        _note(axes, "no column was compared")
    scores = [c.score if _finite(c.score) else 0.0 for c in ordered]
    positions = list(range(len(ordered)))[::-1]  # first (drifted) on top
    axes.barh(positions, scores, color=[DRIFTED if c.drifted else STABLE for c in ordered], height=0.6)
    axes.scatter(
        [c.threshold for c in ordered],
        positions,
        marker="|",
        s=400,
        color="black",
        label="threshold",
        zorder=3,
    )
    top = max([1.0, *scores, *(c.threshold for c in ordered)])
    for y, column in zip(positions, ordered, strict=True):
        score = f"{column.score:.3g}" if _finite(column.score) else "n/a"
        verdict = "drifted" if column.drifted else "stable"
        axes.text(top * 1.02, y, f"{column.method}: {score} ({verdict})", va="center", fontsize=8)
    axes.set_yticks(positions, [c.column for c in ordered])
    axes.set_xlim(0, top * 1.6)
    axes.set_xlabel("drift score (a p-value for tests, a distance otherwise)")
    drifted = sum(c.drifted for c in everything)
    axes.set_title(
        f"{title}: {drifted} of {len(everything)} drifted, share {drift_share:.2f} "
        f"({'at or above' if drift_share >= threshold else 'below'} the threshold {threshold:g})"
        + (f"\nthe first {MAX_COLUMNS}, drifted first" if len(everything) > MAX_COLUMNS else "")
    )
    if ordered:
        axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# The watch's judged evidence, in the order the panels are drawn, and how each value reads.
WATCHED = {
    "performance": lambda v: f"{v:.4g}",
    "5xx share": lambda v: f"{v:.2%}",
    "p99 latency": lambda v: f"{v * 1000:.0f} ms",
}


def rollout_watch(result: dict[str, Any]) -> bytes:
    """The watch after rollout as before/after bars: for each judged evidence (the primary metric on the
    same labelled rows, the 5xx share, the p99 latency) the previous model's value beside the live one's,
    the live bar red when the watch found it worse. `result` is the `rollout` mapping of the monitor's
    verdict (Rollout.as_dict())."""
    evidence = {item["name"]: item for item in result.get("evidence") or []}
    figure = _figure()
    panels = figure.subplots(1, len(WATCHED), squeeze=False)[0]
    live, previous = result.get("live") or "live", result.get("previous") or "previous"
    for axes, (name, shown) in zip(panels, WATCHED.items(), strict=True):
        item = evidence.get(name)
        axes.set_title(name, fontsize=10)
        axes.set_xticks([0, 1], ["previous", "live"])
        values = [item.get("previous"), item.get("live")] if item else [None, None]
        if not all(_finite(v) for v in values):
            _note(
                axes,
                "not enough\nevidence" if item is None or item["state"] != "unavailable" else "unavailable",
            )
            axes.set_yticks([])
            continue
        colours = [MUTED, DRIFTED if item["state"] == "worse" else STABLE]
        axes.bar([0, 1], values, color=colours, width=0.6)
        for x, value in enumerate(values):
            axes.annotate(shown(value), (x, value), ha="center", va="bottom", fontsize=8)
        axes.set_xlabel(f"{item['live_rows']} / {item['previous_rows']} rows", fontsize=8)
        axes.set_ylim(0, max(values) * 1.25 or 1)  # shares, metrics and latencies start at 0
    figure.suptitle(
        f"Watch after rollout: {result.get('state', '?')} ({live} against {previous})", fontsize=10
    )
    return _png(figure)


# --- what the flows show -------------------------------------------------------------------------------


def show_tuning(settings: Settings, study_name: str, storage: str, metric: str, seed: int) -> None:
    """The train run's tuning history and parameter importances, after tuning (every worker's trials)."""

    def study() -> optuna.Study:
        import optuna

        return optuna.load_study(study_name=study_name, storage=storage)

    show_picture(
        settings,
        TUNING_HISTORY,
        "Tuning history",
        lambda: tuning_history(study(), metric),
        caption=f"Each finished trial's cross-validated score and the best so far: study `{study_name}`.",
        description=f"Tuning history of study {study_name}",
    )
    show_picture(
        settings,
        PARAMETER_IMPORTANCES,
        "Parameter importances",
        lambda: parameter_importances(study(), metric, seed),
        caption=(
            "How much of the score's variation each searched parameter explains (Optuna's fANOVA): "
            f"study `{study_name}`."
        ),
        description=f"Parameter importances of study {study_name}",
    )


def show_holdout_curve(
    settings: Settings, tag: str, pipeline: Any, features: pd.DataFrame, labels: pd.Series
) -> None:
    """The registered model's curve on the holdout rows it was scored on."""

    def draw() -> bytes:
        from ..training.metrics import class_text, primary_metric

        task_type = settings.data.task_type
        truth = labels.map(class_text) if task_type == "classification" else labels
        return holdout_curve(
            list(truth), primary_metric(task_type).output(pipeline, features), task_type, tag
        )

    show_picture(
        settings,
        HOLDOUT_CURVE,
        "Holdout curve",
        draw,
        caption=f"`{tag}` on the holdout rows its `holdout-metrics` are scored on.",
        description=f"Holdout curve of {tag}",
    )


def show_drift(settings: Settings, drift: Any, model_tag: str, source: str) -> None:
    """The monitor's drift per column (a drift.DriftResult) for the window against the reference."""
    show_picture(
        settings,
        DRIFT_PER_COLUMN,
        "Drift per column",
        lambda: drift_per_column(drift.columns, drift.drift_share, drift.threshold),
        caption=(
            f"{source} ({drift.n_current} rows) against the {drift.n_reference} reference rows of "
            f"`{model_tag}`; retraining is asked for at a share of drifted columns of "
            f"monitoring.drift_threshold = {drift.threshold:g}."
        ),
        description=f"Drift per column of {source} against {model_tag}'s reference",
    )


# --- showing ------------------------------------------------------------------------------------------


def show_picture(
    settings: Settings,
    key: str,
    title: str,
    png: bytes | Callable[[], bytes],
    caption: str = "",
    description: str | None = None,
) -> UUID | None:
    """Store the picture under reports/ in the project's store and show it in the run's `key` artifact: a
    markdown artifact with the image inline (a data: URI, which Prefect's UI shows wherever the store is)
    and a link to the stored copy. `png` may be a function that draws it, so a drawing that fails is a
    warning too. Returns the artifact's id, or None when the picture could not be shown (a warning, never
    an error: a picture never fails a run; one the store refused is still shown, unlinked)."""
    logger = _logger()
    keep_matplotlib_cache_in_the_project(settings)
    try:
        data = png() if callable(png) else png
        if not data.startswith(PNG_MAGIC):
            raise ValueError("not a PNG image")
    except Exception as exc:  # any drawing failure: the run's real work must go on
        logger.warning("The %s picture could not be drawn: %s: %s", key, type(exc).__name__, exc)
        return None
    link = store_picture(settings, key, data, logger)
    try:
        from prefect.artifacts import create_markdown_artifact

        return create_markdown_artifact(
            key=key, markdown=markdown(title, data, link, caption), description=description or title
        )
    except Exception as exc:  # no server, a refused artifact: a warning like any picture failure
        logger.warning(
            "The %s picture could not be shown in the Prefect UI: %s: %s", key, type(exc).__name__, exc
        )
        return None


def keep_matplotlib_cache_in_the_project(settings: Settings) -> None:
    """matplotlib keeps its font cache in ~/.cache/matplotlib unless MPLCONFIGDIR says otherwise (read when it
    is first imported, which drawing does): the project's state folder instead, as for Prefect and BentoML.
    An exported MPLCONFIGDIR wins."""
    if "MPLCONFIGDIR" not in os.environ:
        folder = settings.state_dir / "matplotlib"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(folder)


def store_picture(settings: Settings, key: str, data: bytes, logger: Any) -> str | None:
    """The PNG under reports/date=<day>/ in the store, create-only with a random suffix like the drift
    reports; a link to it (a signed URL on object storage, file:// on a folder, or under
    monitoring.reports_url), or None with a warning when the store refused it."""
    from ..monitoring.drift import report_link
    from ..storage import REPORTS, open_storage

    now = datetime.now(UTC)
    name = f"{REPORTS}/date={now:%Y-%m-%d}/{key}-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.png"
    try:
        store = open_storage(settings)
        if not store.create(name, data, content_type="image/png"):
            raise FileExistsError(store.url_of(name))
        return report_link(store, name, settings.monitoring.reports_url)
    except Exception as exc:  # the artifact still shows the picture inline
        logger.warning("The %s picture was not stored: %s: %s", key, type(exc).__name__, exc)
        return None


def markdown(title: str, png: bytes, link: str | None = None, caption: str = "") -> str:
    """The artifact: the title, the picture inline as a data: URI, the caption and the stored copy."""
    inline = base64.b64encode(png).decode("ascii")
    lines = [f"# {title}", "", f"![{title}](data:image/png;base64,{inline})"]
    if caption:
        lines += ["", caption]
    if link:
        lines += ["", f"Stored: [{link.rsplit('/', 1)[-1].split('?', 1)[0]}]({link})"]
    return "\n".join(lines)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task run (the warning shows in the UI), else this module's."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover - prefect is a dependency; kept for plain-Python callers
        pass
    return logging.getLogger(__name__)
