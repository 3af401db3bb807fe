"""Benchmark P8: how much of what a changed world costs the loop wins back by itself, and how fast.

    uv run python benchmarks/recovery.py

Runs the demo (local.demo.run_demo: its own Prefect server, worker and service, and the same fixed, seeded,
labelled streams of local.demo_traffic), in which the world changes, the monitor asks for retraining, the
triggered retrain learns from the labelled traffic and the running service switches to it. Then it scores,
on the newest labelled rows (the last feedback.recent_share of the labelled stream, which the retrain
never trained on):

- `metric_old`: the model served before the change;
- `metric_new`: the retrained, promoted model;
- `metric_oracle`: a model trained here, in-process, only on the labelled rows from after the change minus
  those newest rows, with the same family, trials and seed: what knowing exactly when the world changed
  would give;
- `recovered_ratio` = (new - old) / (oracle - old), the share of the oracle's gain the loop won back.

From the demo: `seconds_event_to_serving` (the monitor's retrain signal -> the first answer by the new model,
P6's retrain latency is part of it) and `failed_requests_during_switch` (steady single-row traffic from the
change until the new model answers). Goal P8: recovered_ratio >= 0.8 and no failed request.
The last line printed is one JSON object; the exit code is non-zero only on errors, never because the goal
was missed.
"""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
from _common import load_project, log, ratio, run

GOAL_RATIO = 0.8


def oracle_metric(modules: dict, settings, train: pd.DataFrame, labels: pd.Series, newest, truth) -> float:
    """Tune and fit the configured family on `train` alone, as the train flow would, and score it."""
    tuning, tables, pipeline, metrics = (modules[m] for m in ("tuning", "tables", "pipeline", "metrics"))
    schema = tables.feature_schema(train)
    spec = tuning.make_spec(settings, tables.data_hash(train.assign(_label=labels.to_numpy())))
    study = tuning.open_study(spec, storage=optuna.storages.InMemoryStorage())
    objective = tuning.make_objective(spec, train, labels, schema)
    tuning.run_trials(study, objective, settings.tuning.n_trials, None)
    task_type, family, seed = settings.data.task_type, settings.tuning.model_family, settings.data.seed
    fitted = pipeline.build_pipeline(schema, family, task_type, dict(study.best_trial.params), seed)
    fitted.fit(train, labels)
    return metrics.score(fitted, newest, truth, task_type)[spec.metric]


def main() -> int:
    package, settings, modules = load_project(
        "local.demo",
        "local.demo_traffic",
        "registry.store",
        "training.tuning",
        "training.pipeline",
        "training.metrics",
        "tables",
        "model",
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log(f"Running the {package} demo (Prefect server, worker, service, the changed world)...")
    summary = modules["demo"].run_demo()
    rollout = summary["rollout"]
    settings = modules["config"].get_settings()  # as the demo set them
    clean, changed, _ = modules["demo_traffic"].demo_streams(settings)
    labelled = len(clean.features) + len(changed.features)
    n_newest = math.ceil(settings.feedback.recent_share * labelled)
    newest, truth = changed.features.iloc[-n_newest:], changed.labels.iloc[-n_newest:]
    before, before_labels = changed.features.iloc[:-n_newest], changed.labels.iloc[:-n_newest]
    store, metrics = modules["store"], modules["metrics"]
    task_type = settings.data.task_type
    metric = modules["model"].PRIMARY_METRIC[task_type][0]

    def metric_of(tag: str) -> float:
        model = store.load(tag)
        frame = modules["tables"].conform(newest, model.schema)
        return metrics.score(model.pipeline, frame, truth, task_type)[metric]

    old, new = metric_of(rollout["old"]), metric_of(rollout["new"])
    log(f"Training the oracle on the {len(before)} labelled rows from after the change...")
    oracle = oracle_metric(modules, settings, before, before_labels, newest, truth)
    recovered = ratio(new - old, oracle - old)
    failed = rollout["failed_during_switch"]
    result = {
        "metric": metric,
        "metric_old": round(old, 4),
        "metric_new": round(new, 4),
        "metric_oracle": round(oracle, 4),
        "recovered_ratio": recovered,
        "seconds_event_to_serving": rollout["seconds_event_to_serving"],
        "failed_requests_during_switch": failed,
        "answered_during_switch": rollout["answered_during_switch"],
        "promoted": rollout["promoted"],
        "rows": {"newest": len(newest), "oracle_train": len(before), "labelled": labelled},
        "models": {"old": rollout["old"], "new": rollout["new"]},
        "goal_met": recovered is not None and recovered >= GOAL_RATIO and failed == 0,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
