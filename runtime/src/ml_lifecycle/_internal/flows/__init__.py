"""Thin Prefect flows over the project's modules: train, monitor and retrain."""
