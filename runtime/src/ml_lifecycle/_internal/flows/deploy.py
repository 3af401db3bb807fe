"""Deploy flow: build the production model's Bento and serve it locally, rolling back when it is not ready.

The steps live in serving/bento.py; this flow makes each one a task and the outcome an artifact, so a failed
deploy (and its rollback) is visible in the Prefect UI.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ..config import get_settings
from ..registry import aliases
from ..serving import bento


@task(cache_policy=NO_CACHE)
def build(model_tag: str) -> str:
    return bento.build_bento(get_settings(), model_tag)


@task(cache_policy=NO_CACHE)
def switch(bento_tag: str, model_tag: str) -> dict:
    logger = get_run_logger()
    try:
        result = bento.switch(get_settings(), bento_tag, model_tag, log=logger.info)
    except bento.DeployError as exc:
        create_markdown_artifact(
            key="deploy", markdown=f"# Deploy failed, rolled back\n\n```\n{exc}\n```", description=bento_tag
        )
        raise
    create_markdown_artifact(
        key="deploy",
        markdown=f"# Deployed `{model_tag}`\n\nBento `{bento_tag}` at {result['url']}, pid {result['pid']}.",
        description=bento_tag,
    )
    return result


@flow(name="deploy", log_prints=True)
def deploy() -> dict:
    """Build the Bento of the production model and (re)start local serving on serving.host:serving.port."""
    model_tag = aliases.production_tag(get_settings())
    bento_tag = build(model_tag)
    print(f"Built Bento {bento_tag} for {model_tag}")
    return switch(bento_tag, model_tag)
