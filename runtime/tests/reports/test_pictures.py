"""The pictures as data to PNG: each one is a real PNG that decodes, with pixels, for the usual case and for
the thin ones (one trial, one column, missing values, nothing to compare yet)."""

import base64
import io
import math

import numpy as np
import optuna
import pandas as pd
import pytest
from ml_lifecycle._internal.monitoring.drift import ColumnDrift
from ml_lifecycle._internal.reports import pictures
from PIL import Image


def decoded(png: bytes) -> Image.Image:
    """The PNG, checked whole (PIL's verify reads every chunk and its CRC), then opened to be looked at."""
    assert png.startswith(pictures.PNG_MAGIC)
    Image.open(io.BytesIO(png)).verify()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.width > 200 and image.height > 100, image.size
    return image


def colours(png: bytes) -> int:
    """How many distinct colours the picture has: a blank canvas has one, a drawn plot many."""
    return len(decoded(png).convert("RGB").getcolors(maxcolors=1 << 20) or [])


def study_with(trials: int, pruned: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        depth, rate = (
            trial.suggest_int("max_depth", 1, 8),
            trial.suggest_float("learning_rate", 0.01, 1, log=True),
        )
        if trial.number < pruned:
            raise optuna.TrialPruned()
        return 0.5 + 0.04 * depth - 0.1 * rate

    study.optimize(objective, n_trials=trials)
    return study


@pytest.mark.parametrize("trials", [0, 1, 12])
def test_the_tuning_history_is_a_png_for_any_number_of_trials(trials):
    assert colours(pictures.tuning_history(study_with(trials), "roc_auc")) > 5


def test_the_tuning_history_shows_pruned_trials_beside_completed_ones():
    assert colours(pictures.tuning_history(study_with(10, pruned=4), "rmse")) > 5


@pytest.mark.parametrize("trials", [0, 1, 2, 12])
def test_parameter_importances_is_a_png_even_with_too_few_trials_to_compare(trials):
    assert colours(pictures.parameter_importances(study_with(trials), "roc_auc")) > 5


def test_parameter_importances_draw_the_same_picture_twice():
    study = study_with(12)
    assert pictures.parameter_importances(study, "roc_auc", seed=1) == pictures.parameter_importances(
        study, "roc_auc", seed=1
    )


def test_optunas_figures_are_closed_after_drawing():
    import matplotlib.pyplot as plt

    pictures.tuning_history(study_with(3), "roc_auc")
    before = len(plt.get_fignums())
    for _ in range(3):
        pictures.tuning_history(study_with(3), "roc_auc")
        pictures.parameter_importances(study_with(3), "roc_auc")
    assert len(plt.get_fignums()) == before == 0


def probabilities(rows: int, classes: list[str], seed: int = 0) -> tuple[list[str], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    truth = list(rng.choice(classes, size=rows))
    raw = rng.random((rows, len(classes))) + np.array([[2.0 * (t == c) for c in classes] for t in truth])
    return truth, pd.DataFrame(raw / raw.sum(axis=1, keepdims=True), columns=classes)


@pytest.mark.parametrize("classes", [["0", "1"], ["a", "b", "c"]])
def test_the_holdout_curve_of_a_classifier_is_its_roc_curve(classes):
    truth, output = probabilities(80, classes)
    assert colours(pictures.holdout_curve(truth, output, "classification", "model:v1")) > 5


def test_a_holdout_of_one_class_still_gives_a_picture_that_says_so():
    truth, output = probabilities(30, ["0", "1"])
    assert colours(pictures.holdout_curve(["1"] * 30, output, "classification", "model:v1")) > 5


def test_rows_with_gaps_are_left_out_of_the_curve_not_a_failure():
    truth, output = probabilities(60, ["0", "1"])
    output.iloc[:5, 0] = np.nan
    truth[7] = None
    assert colours(pictures.holdout_curve(truth, output, "classification", "m")) > 5
    values = np.linspace(0, 10, 50)
    predictions = values + np.random.default_rng(0).normal(size=50)
    predictions[:3] = np.nan
    assert colours(pictures.holdout_curve(list(values), predictions, "regression", "m")) > 5


def test_the_holdout_curve_of_a_regression_is_predicted_against_actual():
    values = np.linspace(0, 10, 40)
    assert colours(pictures.holdout_curve(list(values), values * 0.9, "regression", "m")) > 5
    assert colours(pictures.holdout_curve([np.nan] * 3, np.ones(3), "regression", "m")) > 1


def column(name: str, score: float, drifted: bool, method: str = "K-S p_value", threshold: float = 0.05):
    return ColumnDrift(column=name, method=method, score=score, threshold=threshold, drifted=drifted)


def test_drift_per_column_for_many_one_and_no_columns():
    many = [
        column("size", 0.001, True),
        column("weight", 0.6, False),
        column("colour", 0.31, True, "Jensen-Shannon distance", 0.1),
        column("age", 0.02, False, "Wasserstein distance (normed)", 0.1),
    ]
    assert colours(pictures.drift_per_column(many, 0.5, 0.3)) > 5
    assert colours(pictures.drift_per_column(many[:1], 1.0, 0.3)) > 5
    assert colours(pictures.drift_per_column([], 0.0, 0.3)) > 1


def test_many_columns_are_cut_to_the_first_drifted_ones_so_the_picture_stays_small():
    many = [column(f"c{i:03d}", 0.5, False) for i in range(200)] + [column("z", 0.001, True)]
    png = pictures.drift_per_column(many, 1 / 201, 0.3)
    cut = pictures.drift_per_column(many[-1:] + many[: pictures.MAX_COLUMNS - 1], 1 / 201, 0.3)
    assert decoded(png).height == decoded(cut).height < 2000
    assert len(png) < 200_000


def test_a_column_whose_score_is_missing_is_drawn_as_such():
    columns = [column("size", math.nan, False), column("weight", 0.9, False)]
    assert colours(pictures.drift_per_column(columns, 0.0, 0.3)) > 5


def evidence(name: str, live, previous, state: str = "ok") -> dict:
    return {"name": name, "state": state, "detail": "", "live": live, "previous": previous,
            "live_rows": 120, "previous_rows": 340}  # fmt: skip


def test_the_rollout_watch_shows_both_models_side_by_side():
    result = {
        "state": "roll back",
        "live": "model:v2",
        "previous": "model:v1",
        "evidence": [
            evidence("performance", 0.61, 0.83, "worse"),
            evidence("5xx share", 0.0, 0.01),
            evidence("p99 latency", 0.045, 0.040),
            evidence("predictions", {"0": 0.4, "1": 0.6}, {"0": 0.5, "1": 0.5}, "reported"),
        ],
    }
    assert colours(pictures.rollout_watch(result)) > 5


def test_the_rollout_watch_without_evidence_yet_is_still_a_picture():
    result = {
        "state": "not enough evidence",
        "live": "model:v2",
        "previous": "model:v1",
        "evidence": [
            evidence("performance", None, None, "not enough evidence"),
            evidence("5xx share", None, None, "unavailable"),
            evidence("p99 latency", math.nan, 0.04, "not enough evidence"),
        ],
    }
    assert colours(pictures.rollout_watch(result)) > 1
    assert colours(pictures.rollout_watch({"state": "not watched", "evidence": []})) > 1


def test_the_artifact_holds_the_picture_inline_and_links_the_stored_copy():
    png = pictures.drift_per_column([column("size", 0.001, True)], 1.0, 0.3)
    link = "https://store.example.com/b/reports/date=2026-12-07/drift-per-column-x.png?X-Amz-Signature=abc"
    text = pictures.markdown("Drift per column", png, link, caption="share 1.0")
    inline = text.split("](data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert base64.b64decode(inline) == png
    assert text.startswith("# Drift per column\n\n![Drift per column](data:image/png;base64,")
    assert "\n\nshare 1.0\n\n" in text
    assert text.endswith(f"Stored: [drift-per-column-x.png]({link})")
    assert "Stored:" not in pictures.markdown("t", png)
