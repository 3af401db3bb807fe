"""Retrain flow: the target of the drift trigger in prefect.yaml.

Its parameters are typed to match what the trigger renders: `drift_share` arrives as a number, `reason` as
text. A mismatch fails only in the server log ("Action failed"), so keep the two in step.
"""

from __future__ import annotations

from prefect import flow


@flow(name="retrain", log_prints=True)
def retrain(reason: str = "manual", drift_share: float | None = None) -> str:
    """Train a new model on the current training data; the study resumes when the data is unchanged."""
    # Imported here, not at the top: the training stack (Optuna, scikit-learn, BentoML) is slow to import,
    # and a worker imports a flow's module before the run starts. Here the run starts (and shows in the UI)
    # that much sooner, and a broken import fails this run with its traceback instead of crashing the run
    # before it starts (docs/decisions.md#import-times; benchmarks/retrain_latency.py measures it).
    from .train import train

    print(f"Retraining: {reason} (drift share {drift_share})")
    return train(reason=reason)
