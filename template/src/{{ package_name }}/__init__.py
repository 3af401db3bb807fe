"""Train, serve and monitor a model, each stage a Prefect flow."""

import os

from .config import SettingsError, get_settings

# BentoML reads BENTOML_HOME once, when it first opens its store. A store configured in settings.toml is
# exported here, before any module of the project imports bentoml, so that the CLI, the worker's flow runs and
# `bentoml serve` (started by the CLI, inheriting the environment) all use it.
try:
    if get_settings().registry.bentoml_home:
        os.environ.setdefault("BENTOML_HOME", str(get_settings().bentoml_home))
except SettingsError:
    pass  # raised again where the settings are used: the CLI prints it, one line per problem, and exits 2
