"""Train, serve and monitor a model, each stage a Prefect flow."""

import os

from .config import get_settings

# BentoML reads BENTOML_HOME when it is first imported; setting it here, before any module of the project
# imports bentoml, gives every process of the project (CLI, worker, `bentoml serve`) the same model store.
os.environ.setdefault("BENTOML_HOME", str(get_settings().bentoml_home))
