"""Training flow: validate the data, add the labelled production traffic (training/feedback.py), tune with
Optuna in batches of trials (in this run, or spread over tune runs on the work pool: flows/tune.py), refit,
score, register, gate (on the holdout and the recent slice), and prune the model store; one run at a time
per project (training/lock.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ..config import get_settings
from ..registry import card, retention, store
from ..reports import pictures
from ..training import data_version, feedback, holdout, lock, tuning
from .prepare import prepare
from .promote import gate, run_decider, settle
from .tuning_progress import TuningProgress
from .workers import check_workers, tune_on_workers


def recorded_version(data: Path | None) -> dict[str, Any]:
    """The DVC version of the data file, when DVC tracks it; a warning when the file changed since."""
    version = data_version.dvc_version(data) if data else {}
    if version and not version["dvc_matches"]:
        get_run_logger().warning(
            "%s changed since `dvc add` (%s holds md5 %s): the model is trained on rows DVC does not hold; "
            "run `uv run dvc add %s` and commit the .dvc file",
            data,
            version["dvc_file"],
            version["dvc_md5"],
            data,
        )
    return version


@task(cache_policy=NO_CACHE)
def tune_batch(
    study: optuna.Study, objective: Callable, n_trials: int, deadline: float | None, target: int
) -> int:
    """One task runs a whole batch of trials, so Prefect's per-task overhead stays small next to trial time
    (docs/decisions.md#tuning-in-batches); none beyond the study's `target` finished trials."""
    return tuning.run_trials(study, objective, n_trials, deadline, target=target)


@task(cache_policy=NO_CACHE)
def refit_and_register(
    spec: tuning.TuningSpec,
    parts: holdout.Split,
    schema: dict,
    data_hash: str,
    reason: str,
    reference: pd.DataFrame,
    sources: list[dict] | None = None,
    recent: tuple[pd.DataFrame, pd.Series] | None = None,
) -> str:
    settings = get_settings()
    study = tuning.open_study(spec)
    params = holdout.best_params(study)
    pipeline, metrics = holdout.refit_and_score(parts, schema, params, settings)
    tag = store.save(
        settings,
        pipeline,
        schema=schema,
        reference=holdout.reference_sample(reference, settings),
        metrics=metrics,
        params=params,
        data_hash=data_hash,
        extra={
            "study_name": spec.study_name,
            "n_trials_finished": tuning.finished_trials(study),
            "reason": reason,
            "data_sources": sources or [],
        },
    )
    trained_on = "; ".join(
        f"{s['part']}: {s['rows']} rows, hash {s['hash']}"
        + (f", DVC md5 {s['dvc_md5']}" if "dvc_md5" in s else "")
        for s in sources or []
    )
    create_table_artifact(
        key="holdout-metrics",
        table=[{"metric": name, "value": round(value, 6)} for name, value in metrics.items()]
        + [{"metric": f"rows: {s['part']}", "value": s["rows"]} for s in sources or []]
        + [
            {"metric": f"DVC md5: {s['part']}", "value": s["dvc_md5"]}
            for s in sources or []
            if "dvc_md5" in s
        ],
        description=(
            f"Holdout metrics of {tag} ({settings.tuning.model_family}, {settings.data.task_type}); "
            f"data: {trained_on}"
        ),
    )
    pictures.show_holdout_curve(settings, tag, pipeline, parts.test_x, parts.test_y)  # never fails the run
    model_card = card.build(
        settings,
        tag,
        pipeline,
        spec=spec,
        study=study,
        params=params,
        holdout=(parts.test_x, parts.test_y),
        metrics=metrics,
        sources=sources,
        recent=recent,
    )
    card.save(settings, model_card)
    create_markdown_artifact(
        key="model-card", markdown=card.markdown(model_card), description=f"Model card of {tag}"
    )
    return tag


def drift_reference(parts: holdout.Split, labelled: feedback.Feedback, min_rows: int) -> pd.DataFrame:
    """What the monitor compares traffic with: the world the model learned last. After learning from labelled
    traffic that is its newest rows (the recent slice, at least `min_rows`), else drift would be reported,
    and retraining asked for, on every window after a retrain, against training rows mostly from before the
    change."""
    if not labelled.used:
        return parts.train_x
    rows = pd.concat([labelled.train, labelled.recent], ignore_index=True)
    return rows.tail(max(len(labelled.recent), min_rows))[list(parts.train_x.columns)].reset_index(drop=True)


@task(cache_policy=NO_CACHE)
def prune_store() -> list[str]:
    """Apply registry.keep_models; production and its rollback history are always kept."""
    deleted = retention.prune(get_settings())
    if deleted:
        get_run_logger().info("Deleted %d old model(s) from the store: %s", len(deleted), ", ".join(deleted))
    return deleted


def tune(
    spec: tuning.TuningSpec,
    parts: holdout.Split,
    feature_schema: dict,
    n_trials: int,
    timeout_seconds: float = 0,
) -> int:
    """Bring the study up to n_trials finished trials, a batch per task; returns how many ran now.

    One study object serves every batch, so its seeded sampler runs on from batch to batch and the flow tries
    the same parameters as one uninterrupted `study.optimize` loop with the same seed.
    """
    logger = get_run_logger()
    study = tuning.open_study(spec)
    objective = tuning.make_objective(spec, parts.train_x, parts.train_y, feature_schema)
    done = tuning.finished_trials(study)
    deadline = time.time() + timeout_seconds if timeout_seconds else None
    batches = tuning.plan_batches(n_trials - done, get_settings().tuning.trials_per_task)
    logger.info(
        "Study %s: %d of %d trials already finished, %d to run in %d batch(es)",
        spec.study_name,
        done,
        n_trials,
        max(n_trials - done, 0),
        len(batches),
    )
    ran, progress = 0, TuningProgress(study, n_trials, spec.metric)
    for size in batches:
        ran += tune_batch(study, objective, size, deadline, n_trials)
        progress.update()
        if deadline is not None and time.time() >= deadline:
            logger.warning("Tuning time budget of %ss reached", timeout_seconds)
            break
    return ran


@flow(name="train", log_prints=True)
def train(n_trials: int | None = None, reason: str = "manual") -> str:
    """Train, tune, register and put the model through the promotion gate; returns its tag in the store."""
    settings = get_settings()
    if settings.tuning.workers > 1:
        check_workers()  # before any work: is there a server and a tune deployment to spread tuning over?
    prepared = prepare()
    dataset, schema, labelled, parts, spec = (
        prepared.dataset,
        prepared.schema,
        prepared.labelled,
        prepared.parts,
        prepared.spec,
    )
    data_hash = prepared.data_hash
    wanted = settings.tuning.n_trials if n_trials is None else n_trials
    with lock.exclusive(settings, on_wait=get_run_logger().warning):
        if settings.tuning.workers > 1:
            tune_on_workers(spec, wanted, settings.tuning.timeout_seconds)
        else:
            tune(spec, parts, schema, wanted, settings.tuning.timeout_seconds)
        pictures.show_tuning(settings, spec.study_name, spec.storage, spec.metric, spec.seed)
        sources = labelled.sources(dataset.frame, dataset.source)
        sources[0] |= recorded_version(settings.data_path)
        reference = drift_reference(parts, labelled, settings.monitoring.min_rows)
        recent = labelled.recent.drop(columns=[dataset.target]), labelled.recent[dataset.target]
        tag = refit_and_register(spec, parts, schema, data_hash, reason, reference, sources, recent)
        print(f"Registered model {tag}")
        decider = run_decider()  # promotion.mode: the gate, a person (the run pauses), or a suggestion
        verdict = gate(tag, parts.test_x, parts.test_y, reason, mode=decider.mode, recent=recent)
        prune_store()
    # Outside the training lock: a person's answer may take hours, and the next training need not wait.
    verdict = settle(verdict, decider, parts.test_x, parts.test_y, reason, recent=recent)
    print(f"{'Promoted' if verdict['promoted'] else 'Not promoted'} {tag}: {verdict['why']}")
    return tag
