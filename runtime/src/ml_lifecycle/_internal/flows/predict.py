"""Batch prediction flow: score a CSV or Parquet file with the production model.

The logic lives in serving/batch_scoring.py; this flow makes it a task and its result an artifact.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from ..config import get_settings
from ..registry import aliases
from ..serving import batch_scoring


@task(cache_policy=NO_CACHE)
def production_model() -> str:
    return aliases.production_tag(get_settings())


@task(cache_policy=NO_CACHE)
def score(input_path: str, output_path: str, tag: str) -> dict:
    result = batch_scoring.score_file(get_settings(), input_path, output_path, tag)
    create_table_artifact(
        key="batch-predictions",
        table=[{"field": k, "value": str(v)} for k, v in result.as_dict().items() if k != "columns"],
        description=f"Batch scoring of {result.input} with {result.model_version}",
    )
    return result.as_dict()


@flow(name="predict", log_prints=True)
def predict(input_path: str, output_path: str, tag: str | None = None) -> dict:
    """Score `input_path` (CSV or Parquet) into `output_path`; the production model unless `tag` is given."""
    result = score(input_path, output_path, tag or production_model())
    print(
        f"Scored {result['rows']} rows of {result['input']} with {result['model_version']} "
        f"into {result['output']} in {result['seconds']} s"
    )
    return result
