"""What the train flow and the tune flow's workers both do first: load the configured data and the labelled
traffic, split them and name their study. A module of its own so that neither flow imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from .. import tables
from ..config import get_settings
from ..training import feedback, holdout, tuning, validation


@task(cache_policy=NO_CACHE)
def load_data() -> validation.Dataset:
    """Fail here, before any model exists, when the data is unusable."""
    return validation.load_dataset(get_settings())


@task(cache_policy=NO_CACHE)
def load_feedback(dataset: validation.Dataset) -> feedback.Feedback:
    """The labelled traffic to learn from; skipped labels are warnings naming the cause, never a failure."""
    found = feedback.load(get_settings(), dataset.frame, dataset.target)
    logger = get_run_logger()
    for line in found.warnings():  # the skipped labels by cause, in one line
        logger.warning(line)
    logger.info("Labelled traffic: %s", found.note)
    return found


@dataclass(frozen=True)
class Prepared:
    """The training rows, split, and the study they name."""

    dataset: validation.Dataset
    schema: dict
    labelled: feedback.Feedback
    data_hash: str
    parts: holdout.Split
    spec: tuning.TuningSpec


def prepare() -> Prepared:
    """Load the configured data and the labelled traffic, split them and name their study. The tune flow's
    workers prepare alike, so they land on the train run's study as long as they see the same rows."""
    settings = get_settings()
    dataset = load_data()
    schema = tables.feature_schema(dataset.features)
    labelled = load_feedback(dataset)
    # The study's name follows the training rows: new labelled traffic is a new study, not a resumed one.
    rows = pd.concat([dataset.frame, labelled.train], ignore_index=True) if labelled.used else dataset.frame
    data_hash = tables.data_hash(rows)
    parts = holdout.with_rows(holdout.split(dataset, settings), labelled.train, dataset.target)
    return Prepared(dataset, schema, labelled, data_hash, parts, tuning.make_spec(settings, data_hash))
