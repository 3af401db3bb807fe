"""The machinery behind ml_lifecycle's public API; nothing here is promised to stay as it is."""
