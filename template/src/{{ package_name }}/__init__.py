"""Train, serve and monitor a model, each stage a Prefect flow."""

import os
import sys

from .config import SettingsError, get_settings

# BentoML reads BENTOML_HOME once, the first time anything opens its store, and otherwise uses ~/bentoml,
# shared by every project. The project's store (settings.bentoml_home, by default .state/bentoml) is exported
# here because importing the package is the one step every process passes before it touches the store: the
# CLI, a worker's flow runs (Prefect imports the flow's module; there is no start-up of ours), `bentoml serve`
# importing the service, and the processes those start, which inherit the variable.
try:
    os.environ["BENTOML_HOME"] = str(get_settings().bentoml_home)
except SettingsError:
    pass  # raised again where the settings are used: the CLI prints it, one line per problem, and exits 2
else:
    if "bentoml" in sys.modules:  # a bare `bentoml serve|build` may have opened another store already
        from bentoml._internal.configuration.containers import BentoMLContainer

        opened = BentoMLContainer.bentoml_home.get()
        if os.path.realpath(opened) != os.path.realpath(os.environ["BENTOML_HOME"]):
            raise RuntimeError(
                f"BentoML opened the model store {opened} before this project "
                f"was imported, but the project's store is {os.environ['BENTOML_HOME']}: use `python -m "
                f"{__name__} serve|deploy`, or export BENTOML_HOME={os.environ['BENTOML_HOME']} first"
            )
