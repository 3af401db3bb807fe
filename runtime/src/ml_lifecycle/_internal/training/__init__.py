"""Training: the data checked, the pipeline built, tuned with Optuna, refitted and scored."""
