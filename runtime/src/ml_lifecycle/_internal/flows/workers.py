"""The train run's side of tuning spread over workers: `tune_on_workers` submits tuning.workers runs of the
tune flow (flows/tune.py) to the work pool and waits for them. Apart from the tune flow so that neither flow
module imports the other: a worker importing the tune flow never pulls in the train flow, nor the other way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from prefect import get_run_logger

from ..config import get_settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from ..training.tuning import TuningSpec

POLL_SECONDS = 2.0
# A tune run still waiting for a worker after this long is worth a warning: the pool may have none.
WAITING_WARNING_SECONDS = 60.0


class WorkersUnavailable(RuntimeError):
    """tuning.workers > 1, but no Prefect server or no tune deployment to send the tune runs to."""


def check_workers() -> None:
    """Fail before any work when the tune runs could not be sent anywhere: without PREFECT_API_URL a
    command runs on a temporary server that no worker polls; or the tune deployment is not deployed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    workers, deployment = get_settings().tuning.workers, get_settings().tuning.deployment
    if not get_current_settings().api.url:
        raise WorkersUnavailable(
            f"tuning.workers = {workers}: tune runs go to a work pool, whose workers need a Prefect server; "
            "set PREFECT_API_URL to it (docs/scaling.md) or tuning.workers = 1"
        )
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise WorkersUnavailable(
                f"tuning.deployment: {deployment!r} is not deployed on the Prefect server; deploy it from "
                "prefect.yaml (`prefect --no-prompt deploy`) or set tuning.workers = 1"
            ) from None


def tune_on_workers(spec: TuningSpec, n_trials: int, timeout_seconds: float = 0) -> int:
    """Submit tuning.workers runs of tuning.deployment to its work pool and wait for them to end; returns how
    many trials they finished. A run that does not complete fails the train run, naming it."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.runtime import flow_run

    from ..training import tuning
    from .tuning_progress import TuningProgress

    settings, logger = get_settings(), get_run_logger()
    workers, deployment = settings.tuning.workers, settings.tuning.deployment
    check_workers()
    study = tuning.open_study(spec)  # created here, before the workers race to create it
    stale = tuning.fail_stale_trials(study)  # no worker runs now: the training lock is this run's
    if stale:
        logger.warning("Closed trial(s) %s, left running by a stopped worker, as failed", stale)
    done = tuning.finished_trials(study)
    if done >= n_trials:
        logger.info("Study %s already has %d of %d trials finished", spec.study_name, done, n_trials)
        return 0
    deadline = time.time() + timeout_seconds if timeout_seconds else None
    parent = flow_run.get_id() or "no-flow-run"
    runs: list[FlowRun] = []
    for worker in range(workers):
        parameters = {
            "study_name": spec.study_name,
            "n_trials": n_trials,
            "worker": worker,
            # Each worker draws its own random trials, the same ones on every run; resumed studies move on as
            # in tuning.open_study.
            "sampler_seed": spec.seed + done + worker,
            "deadline": deadline,
        }
        try:
            run = run_deployment(
                deployment,
                parameters=parameters,
                timeout=0,
                flow_run_name=f"worker-{worker}",
                idempotency_key=f"{parent}-tune-{worker}",
            )
        except ObjectNotFound:  # deleted since check_workers
            raise WorkersUnavailable(f"tuning.deployment: {deployment!r} is gone from the server") from None
        runs.append(cast("FlowRun", run))  # called from sync code, so not the coroutine of its async twin
    logger.info(
        "Study %s: %d of %d trials finished; %d run(s) of %s submitted to work pool %s",
        spec.study_name,
        done,
        n_trials,
        workers,
        deployment,
        runs[0].work_pool_name,
    )
    progress = TuningProgress(study, n_trials, spec.metric)
    ended = wait_for(runs, on_poll=progress.update)
    failed = [run for run in ended if run.state is None or not run.state.is_completed()]
    if failed:
        tuning.fail_stale_trials(study)
        states = ", ".join(f"{run.name} {run.state.name if run.state else 'no state'}" for run in failed)
        raise RuntimeError(f"tune run(s) of {deployment} did not complete: {states}; see their logs")
    ran = tuning.finished_trials(study) - done
    logger.info("Workers ran %d trial(s); study %s has %d of %d", ran, spec.study_name, done + ran, n_trials)
    return ran


def wait_for(runs: list[FlowRun], on_poll: Callable[[], None] | None = None) -> list[FlowRun]:
    """Poll the runs until each has ended, calling `on_poll` at each poll (the progress artifact); warn once
    when some still wait for a worker after a minute."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    logger, started, warned = get_run_logger(), time.monotonic(), False
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(run.id) for run in runs]
            if on_poll is not None:
                on_poll()
            if all(run.state is not None and run.state.is_final() for run in runs):
                return runs
            waiting = [run.name for run in runs if run.state_type in (StateType.SCHEDULED, StateType.PENDING)]
            if waiting and not warned and time.monotonic() - started > WAITING_WARNING_SECONDS:
                logger.warning(
                    "Tune run(s) %s still wait for a worker: start one with `prefect worker start --pool %s`",
                    ", ".join(waiting),
                    runs[0].work_pool_name,
                )
                warned = True
            time.sleep(POLL_SECONDS)
