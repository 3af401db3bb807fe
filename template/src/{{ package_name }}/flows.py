"""The project's Prefect flows, as prefect.yaml deploys them (`<package>.flows.train`, `.tune`, `.monitor`,
`.retrain`): the library's flows, each imported when Prefect asks for it, so a run imports only its own."""

from ml_lifecycle.flows import __all__, __getattr__  # noqa: F401
