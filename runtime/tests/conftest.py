"""The library's suite runs against the template's default project, rendered once per session into a scratch
folder: the library serves a project, and its settings file, state folder and the user's three files are
that project's. Every test runs against a throwaway model store, study database, reports folder and Prefect
home, so the suite touches neither a project's own `.state/` nor your home directory."""

import atexit
import os
import shutil
import sys
import tempfile
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import copier
import pandas as pd
import pytest
from copier.errors import DirtyLocalWarning

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "my_ml_project"  # the default project's package, bound below

_SCRATCH = Path(tempfile.mkdtemp(prefix="ml-lifecycle-tests-"))
# Removed when the run ends: one scratch folder per run would otherwise pile up in the temp folder.
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def _render_default_project(dst: Path) -> Path:
    """`copier copy --trust --defaults` of this repository's working tree (uncommitted changes included);
    no tasks, so nothing is installed: the library is the root environment's own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DirtyLocalWarning)
        copier.run_copy(
            str(REPO),
            str(dst),
            data={"project_name": "My ML Project"},
            defaults=True,
            unsafe=True,
            vcs_ref="HEAD",
            quiet=True,
            skip_tasks=True,
        )
    return dst


PROJECT = _render_default_project(_SCRATCH / "project")
PROJECT_SRC = PROJECT / "src"
sys.path.insert(0, str(PROJECT_SRC))

# A throwaway model store, Prefect home, study database and reports folder, and a short tuning, as variables:
# set while the modules are imported (BentoML and Prefect read theirs when first imported) and for each of
# this suite's tests (fixtures below), never for the generator's tests in the same session, whose rendered
# projects are named my_ml_project too and run with the user's environment.
SCRATCH_ENV = {
    "BENTOML_HOME": str(_SCRATCH / "bentoml"),
    "PREFECT_HOME": str(_SCRATCH / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    f"{PACKAGE.upper()}_TUNING__STORAGE": f"sqlite:///{_SCRATCH / 'studies.db'}",
    f"{PACKAGE.upper()}_TUNING__N_TRIALS": "3",
    f"{PACKAGE.upper()}_TUNING__CV_FOLDS": "2",
    f"{PACKAGE.upper()}_STORAGE__URL": str(_SCRATCH / "store"),
}
_OUTSIDE = {name: os.environ.get(name) for name in SCRATCH_ENV}
os.environ.update(SCRATCH_ENV)

# Prefect sets up its logging (a console handler on the sys.stderr of that moment) when prefect.main is first
# imported: here, and not inside a test that captures stderr with capsys, whose stream is closed after that
# test and would make every later Prefect log line fail.
import prefect.main  # noqa: E402, F401

# Importing the project binds the library to it: before any ml_lifecycle._internal module is imported.
from my_ml_project import dataset, features  # noqa: E402

# isort: split
from ml_lifecycle._internal.config import get_settings  # noqa: E402
from ml_lifecycle._internal.registry import aliases, store  # noqa: E402
from ml_lifecycle._internal.storage import open_storage  # noqa: E402
from ml_lifecycle._internal.tables import data_hash, feature_schema, read_table  # noqa: E402
from ml_lifecycle._internal.training.pipeline import build_pipeline  # noqa: E402
from ml_lifecycle.testing import example_frame  # noqa: E402


def pytest_collection_finish(session: pytest.Session) -> None:
    """The modules are imported: the scratch variables leave the process's environment (the fixtures below
    set them again for this suite's tests)."""
    restore_outside()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """With workers (`-n 2`) this process collects nothing, so pytest_collection_finish never comes: the
    scratch variables leave its environment before it starts the workers, or they would inherit them as the
    outside environment, and every generator test's project would write to this process's scratch store."""
    if session.config.getoption("dist", default="no") != "no" and not hasattr(session.config, "workerinput"):
        restore_outside()


def restore_outside() -> None:
    for name, value in _OUTSIDE.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def scratch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scratch variables, and the rendered project on PYTHONPATH, so a test's `python -c "import
    my_ml_project"` in the root environment's interpreter finds the project this suite serves."""
    for name, value in SCRATCH_ENV.items():
        monkeypatch.setenv(name, value)
    paths = [str(PROJECT_SRC), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))


@pytest.fixture(autouse=True)
def scratch_environment(monkeypatch):
    scratch_env(monkeypatch)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# The library's example data (what the contract test fits every model family on), under the suite's name.
make_frame = example_frame


@pytest.fixture(autouse=True)
def without_your_feature_steps(monkeypatch):
    """The library's tests run on small frames of their own that the project's features.py steps know
    nothing of."""
    monkeypatch.setattr(features, "feature_steps", list)


@pytest.fixture
def ratio_step(monkeypatch):
    """features.py's worked example switched on, as a user does by uncommenting its line in
    feature_steps(): size_per_weight, derived from the frames' size and weight."""
    monkeypatch.setattr(
        features, "feature_steps", lambda: [("size_per_weight", features.Ratio("size", "weight"))]
    )


@pytest.fixture
def settings():
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def task_type() -> str:
    return get_settings().data.task_type


def use_training_file(monkeypatch, path: Path, target: str = "label"):
    """Train on `path` for one test, whatever the project's dataset.py loads: the library is tested on known
    data."""
    monkeypatch.setenv(f"{PACKAGE.upper()}_DATA__PATH", str(path))
    monkeypatch.setenv(f"{PACKAGE.upper()}_DATA__TARGET_COLUMN", target)
    monkeypatch.setattr(dataset, "load_frame", lambda settings: read_table(settings.data_path))
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def csv_settings(tmp_path, monkeypatch, task_type):
    """The settings, with a CSV of mixed data (column `label` to predict) as the training data."""
    path = tmp_path / "train.csv"
    make_frame(task_type).to_csv(path, index=False)
    yield use_training_file(monkeypatch, path)
    get_settings.cache_clear()


@pytest.fixture(scope="package")
def prefect_server():
    """One Prefect test server for the library's suite: it takes about 20 s to start on two cores. Its scope
    ends with this package, so the scratch variables it holds (PYTHONPATH on the scratch project, the
    scratch store) never reach the generator's tests that run after it in the same session."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as monkeypatch:  # set up before any test's own scratch variables
        scratch_env(monkeypatch)
        with prefect_test_harness(server_startup_timeout=90):
            yield


def log_traffic(
    store: Path,
    frame: pd.DataFrame,
    prefix: str,
    start: datetime,
    seconds_apart: float = 1,
    ids: list[str] | None = None,
) -> list[str]:
    """Write `frame`'s rows to the request log in the folder store `store` as served one by one from `start`
    on, as the service logs them (features as sent, a missing value as null); returns their request ids
    (`ids`, or prefix-0, ...)."""
    from ml_lifecycle._internal.records import RequestRecord
    from ml_lifecycle._internal.serving.request_log import RequestLog
    from ml_lifecycle._internal.storage import Storage

    ids = ids or [f"{prefix}-{i}" for i in range(len(frame))]
    sink = RequestLog(Storage(store.as_uri()), replica="test", retention_hours=1e6)
    sink.submit(
        RequestRecord(
            request_id=request_id,
            time=start + timedelta(seconds=i * seconds_apart),
            endpoint="/predict_one",
            model_version="model:v1",
            row=0,
            features={k: (None if pd.isna(v) else v) for k, v in row.items()},
            prediction=0,
            probabilities=None,
        )
        for i, (request_id, (_, row)) in enumerate(zip(ids, frame.iterrows(), strict=True))
    )
    sink.close()
    return ids


def register(
    settings,
    task_type: str,
    *,
    scrambled: bool = False,
    depth: int = 6,
    drop: tuple[str, ...] = (),
    frame: pd.DataFrame | None = None,
) -> str:
    """Fit and register a candidate on `frame` (by default the world as it was); `scrambled` trains on
    shuffled labels, so it is clearly worse; `drop` leaves columns out, as when the data changed shape."""
    frame = (make_frame(task_type, seed=3) if frame is None else frame).drop(columns=list(drop))
    features, labels = frame.drop(columns=["label"]), frame["label"]
    if scrambled:
        labels = labels.sample(frac=1.0, random_state=0).reset_index(drop=True)
    schema = feature_schema(features)
    params = {"n_estimators": 30, "max_depth": depth, "min_samples_leaf": 2, "max_features": 0.8}
    pipeline = build_pipeline(schema, "random_forest", task_type, params, seed=0).fit(features, labels)
    digest = data_hash(frame)
    return store.save(
        settings, pipeline, schema=schema, reference=features, metrics={}, params=params, data_hash=digest
    )


def clear_alias(settings) -> None:
    """No production model: the alias record gone from the store, and no 2.0 record left to take over."""
    open_storage(settings).delete(aliases.key(settings))
    aliases.legacy_file(settings).unlink(missing_ok=True)


@pytest.fixture
def production(csv_settings, task_type):
    """A production model in the suite's store: the service is built from its schema."""
    clear_alias(csv_settings)
    tag = register(csv_settings, task_type)
    aliases.change(csv_settings, lambda record: record.history.append(aliases.entry(tag, "test")))
    yield tag
    clear_alias(csv_settings)


def latest_drift_artifact() -> str:
    """The newest drift-report artifact's markdown, as the Prefect UI shows it."""
    from ml_lifecycle._internal.flows import monitor as monitor_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[monitor_flow.ARTIFACT_KEY])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(artifacts[0].data)
