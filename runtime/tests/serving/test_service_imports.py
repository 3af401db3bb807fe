"""`bentoml serve` imports the project's service module in every worker: it must not pull in the training
stack (Optuna, the user's dataset.py, training data checks), monitoring (Evidently) or the demo's
processes."""

import json
import os
import subprocess
import sys

from ml_lifecycle._internal.project import bound

NOT_AT_SERVE = (
    "optuna",
    "evidently",
    "ml_lifecycle._internal.local",
    "ml_lifecycle._internal.monitoring",
    "ml_lifecycle._internal.training.tuning",
    "ml_lifecycle._internal.training.validation",
)


def test_the_service_module_imports_no_training_monitoring_or_demo_code(production):
    project = bound()
    script = f"import json, sys; import {project.package}.service; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(project.directory.parent)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert f"{project.package}.service" in imported
    loaded = [m for m in imported if m.startswith(NOT_AT_SERVE) or m == f"{project.package}.dataset"]
    assert loaded == []
