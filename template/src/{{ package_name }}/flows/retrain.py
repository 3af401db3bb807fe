"""Retrain flow: the target of the drift trigger in prefect.yaml.

Its parameters are typed to match what the trigger renders: `drift_share` arrives as a number, `reason` as
text. A mismatch fails only in the server log ("Action failed"), so keep the two in step.
"""

from __future__ import annotations

from prefect import flow

from .train import train


@flow(name="retrain", log_prints=True)
def retrain(reason: str = "manual", drift_share: float | None = None) -> str:
    """Train a new model on the current training data; the study resumes when the data is unchanged."""
    print(f"Retraining: {reason} (drift share {drift_share})")
    return train(reason=reason)
