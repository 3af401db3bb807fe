"""Train, serve and monitor a model, each stage a Prefect flow; the machinery is the ml-lifecycle library."""

import ml_lifecycle

# The library serves this package: its settings, metric and event names, and its model store. Binding
# reads nothing: the settings (and the store they name) are read when first used.
ml_lifecycle.bind(__name__, __file__)
