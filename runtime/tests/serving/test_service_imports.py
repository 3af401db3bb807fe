"""`bentoml serve` imports the project's service module in every worker and asks it for `Predictor`: that
must not pull in the training stack (Optuna, the user's dataset.py, training data checks), monitoring
(Evidently), the runs' pictures (matplotlib) or the demo's processes. Importing the module reads nothing:
the service is built, from the settings and the production model, when `Predictor` is first asked for."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ml_lifecycle._internal.project import bound

NOT_AT_SERVE = (
    "optuna",
    "evidently",
    "matplotlib",
    "prefect",
    "sklearn.inspection",
    "ml_lifecycle._internal.reports",
    "ml_lifecycle._internal.local",
    "ml_lifecycle._internal.monitoring",
    "ml_lifecycle._internal.flows",
    "ml_lifecycle._internal.registry.promotion",
    "ml_lifecycle._internal.training.tuning",
    "ml_lifecycle._internal.training.validation",
    "ml_lifecycle._internal.training.holdout",
    "ml_lifecycle._internal.training.feedback",
)
# Not listed, because serving needs them: scikit-learn (the model is a fitted pipeline; its estimators'
# modules import sklearn.model_selection and sklearn.metrics), SciPy, pandas, and training.metrics, which
# the settings' own check of data.task_type imports (nothing beyond what the model already brought).


def run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter that finds the project's package."""
    project = bound()
    environ = {**os.environ, "PYTHONPATH": str(project.directory.parent), **env}
    return subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True)


def test_the_service_imports_no_training_monitoring_or_demo_code(production):
    package = bound().package
    script = (
        f"import json, sys, bentoml, {package}.service as s\n"
        "assert isinstance(s.Predictor, bentoml.Service), s.Predictor\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = run(script)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert f"{package}.service" in imported
    loaded = [m for m in imported if m.startswith(NOT_AT_SERVE) or m == f"{package}.dataset"]
    assert loaded == []


def test_the_service_imports_without_a_production_model_and_refuses_to_start_saying_why(tmp_path: Path):
    """No model promoted (an empty store): the modules import, reading nothing; `Predictor` (what `bentoml
    serve` asks for) is the error that says to train."""
    package = bound().package
    script = (
        f"import sys, ml_lifecycle.service, {package}.service as s\n"
        "assert 'ml_lifecycle._internal.config' not in sys.modules\n"
        "try:\n    s.Predictor\nexcept LookupError as e:\n    print(e)"
    )
    result = run(script, BENTOML_HOME=str(tmp_path / "empty-store"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"no production model for {package!r}")
    assert f"run `python -m {package} train`" in result.stdout


def test_a_worker_starts_without_the_training_stack_and_reads_its_onnx_conversion_again(production):
    """What a worker does at start (the service's class made into an instance: the model loaded, its runtime
    chosen) imports nothing of the list either; the second start reads the ONNX conversion the first kept
    in the model's folder instead of importing skl2onnx (docs/decisions.md#service-start-up)."""
    package = bound().package
    script = (
        f"import json, sys, {package}.service as s\n"
        "worker = s.Predictor.inner()\n"
        "print(json.dumps([worker.served.runtime.name, sorted(sys.modules)]))"
    )
    found = []
    for _ in range(2):
        result = run(script)
        assert result.returncode == 0, result.stderr[-3000:]
        found.append(json.loads(result.stdout.strip().splitlines()[-1]))
    (first_runtime, first), (runtime, imported) = found
    assert first_runtime == runtime == "onnx"
    loaded = [m for m in imported if m.startswith(NOT_AT_SERVE) or m == f"{package}.dataset"]
    assert loaded == []
    assert "onnxruntime" in imported and "skl2onnx" not in imported
