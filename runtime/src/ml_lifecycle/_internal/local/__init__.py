"""Processes the demo starts on one machine (Prefect server, worker, BentoML), kept apart from the product."""
