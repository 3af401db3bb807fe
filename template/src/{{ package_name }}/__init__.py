"""Train, serve and monitor a model, each stage a Prefect flow."""

import os

from .config import get_settings

# BentoML reads BENTOML_HOME once, when it first opens its store. A store configured in settings.toml is
# exported here, before any module of the project imports bentoml, so that the CLI, the worker's flow runs and
# `bentoml serve` (started by the CLI, inheriting the environment) all use it.
if get_settings().registry.bentoml_home:
    os.environ.setdefault("BENTOML_HOME", str(get_settings().bentoml_home))
