"""Serving: the BentoML service, its request schema, batching, request log, and batch scoring."""
