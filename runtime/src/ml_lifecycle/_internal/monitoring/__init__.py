"""Monitoring: served traffic against the training reference, drift, alerts and Prometheus metrics."""
