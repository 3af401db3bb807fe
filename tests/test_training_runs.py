"""Training runs in an installed default project, through its command line, where only real processes show
the behaviour: two `train` at once, data with an identifier column, and a schema change the gate must not
promote on its own (`promote --accept-schema-change`).
"""

from __future__ import annotations

import csv
import fcntl
import random
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Project, copy_project, explain, stop_group, with_library

pytestmark = pytest.mark.slow

N_TRIALS = 6

# Every study in the project's Optuna storage: name -> states of its trials. Prints one JSON line.
STUDIES = with_library("""
import json, sys
settings = internal("config").get_settings()
import optuna
storage = settings.optuna_storage
print(json.dumps({
    s.study_name: [t.state.name for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
    for s in optuna.get_all_study_summaries(storage)
}))
""")
MODELS = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
import bentoml
print(json.dumps(sorted(str(m.tag) for m in bentoml.models.list(sys.argv[1]))))
"""
PRODUCTION = with_library("""
import json, sys
settings = internal("config").get_settings()
print(json.dumps(internal("registry.aliases").production_tag(settings)))
""")


@pytest.fixture(scope="module")
def project(default_installed, tmp_path_factory, prefect_home) -> Project:
    """A copy of the session's untrained default project: the tests train from nothing."""
    return copy_project(default_installed, tmp_path_factory.mktemp("training-runs"), prefect_home)


def write_table(path: Path, *, with_id: bool = False, with_weight: bool = True, rows: int = 300) -> Path:
    """A classification table a user might bring: numbers, a text category, a label; optionally an id."""
    rng = random.Random(5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["customer_id"] * with_id + ["size"] + ["weight"] * with_weight + ["color", "label"])
        for row in range(rows):
            size, weight, color = rng.gauss(0, 1), rng.gauss(0, 1), rng.choice(["red", "green", "blue"])
            label = int(2 * size + (color == "red") + rng.gauss(0, 0.3) > 0)
            writer.writerow([f"C-{row:05d}"] * with_id + [size] + [weight] * with_weight + [color, label])
    return path


def registered(output: str) -> str:
    """The tag a training run's output says it registered."""
    assert "Registered model " in output, output[-4000:]
    return output.split("Registered model ")[1].split()[0]


def train_command(project: Project) -> list[str]:
    return ["uv", "run", "python", "-m", project.package, "train", "--n-trials", str(N_TRIALS)]


def test_two_train_runs_at_once_run_the_trial_count_once(project, tmp_path):
    """Before the lock, two `train --n-trials 10` ran 20 trials in one study. Here the test holds the
    project's training lock until both runs wait on it, so they certainly overlap; then it lets them go."""
    storage = f"{project.package.upper()}_TUNING__STORAGE"
    env = {**project.env, storage: f"sqlite:///{tmp_path / 'studies.db'}"}
    lock_path = Path(project.env["BENTOML_HOME"]) / "locks" / f"{project.package}.training.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    logs = [tmp_path / f"train-{i}.log" for i in range(2)]
    with lock_path.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("the test, until both runs wait\n")
        held.flush()
        runs = []
        for log in logs:
            with log.open("w") as sink:
                runs.append(
                    subprocess.Popen(
                        train_command(project),
                        cwd=project.root,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        try:
            for _ in range(600):  # both runs start their Prefect server and load the data, then wait
                if all("Another training run holds" in log.read_text() for log in logs):
                    break
                assert all(run.poll() is None for run in runs), [log.read_text()[-3000:] for log in logs]
                time.sleep(1)
            else:
                pytest.fail(
                    "the runs never waited for the lock: " + str([log.read_text()[-3000:] for log in logs])
                )
        except BaseException:
            for run in runs:
                stop_group(run)
            raise
        fcntl.flock(held, fcntl.LOCK_UN)
    for run, log in zip(runs, logs, strict=True):
        try:
            run.wait(timeout=900)
        except subprocess.TimeoutExpired:
            stop_group(run)
        assert run.returncode == 0, log.read_text()[-4000:]
    studies = project.query(STUDIES, **{storage: env[storage]})
    assert len(studies) == 1
    (states,) = studies.values()
    assert len(states) == N_TRIALS and set(states) <= {"COMPLETE", "PRUNED"}, states
    tags = {registered(log.read_text()) for log in logs}
    assert len(tags) == 2 and tags <= set(project.query(MODELS)), "one model per run"


def test_an_identifier_column_stops_training_naming_it(project):
    write_table(project.root / "data" / "with_id.csv", with_id=True)
    before = project.query(MODELS)
    prefix = project.package.upper()
    settings = {f"{prefix}_DATA__PATH": "data/with_id.csv", f"{prefix}_DATA__TARGET_COLUMN": "label"}
    result = project.cli("train", "--n-trials", "1", **settings)
    assert result.returncode == 2, explain(result)
    assert "column 'customer_id' looks like an identifier: 300 different values in 300 rows" in result.stderr
    assert "drop it in dataset.py" in result.stderr
    assert project.query(MODELS) == before


def test_a_schema_change_is_promoted_only_on_an_explicit_decision(project):
    prefix = project.package.upper()
    settings = {f"{prefix}_DATA__PATH": "data/shape.csv", f"{prefix}_DATA__TARGET_COLUMN": "label"}
    write_table(project.root / "data" / "shape.csv")
    first = project.cli("train", "--n-trials", "2", **settings)
    assert first.returncode == 0, explain(first)
    if project.query(PRODUCTION, **settings) != registered(
        first.stdout + first.stderr
    ):  # production was trained on other data
        decided = project.cli(
            "promote", "--tag", registered(first.stdout + first.stderr), "--accept-schema-change", **settings
        )
        assert decided.returncode == 0, explain(decided)

    write_table(project.root / "data" / "shape.csv", with_weight=False)  # the column is gone
    changed = project.cli("train", "--n-trials", "2", **settings)
    assert changed.returncode == 0, explain(changed)
    tag = registered(changed.stdout + changed.stderr)
    expected = (
        f"Not promoted {tag}: schema changed (column 'weight' is gone); promote explicitly with "
        f"`python -m {project.package} promote --tag {tag} --accept-schema-change`"
    )
    assert expected in changed.stdout + changed.stderr, explain(changed)
    assert project.query(PRODUCTION, **settings) == registered(first.stdout + first.stderr)

    refused = project.cli("promote", "--tag", tag, **settings)
    assert refused.returncode == 1, explain(refused)
    accepted = project.cli("promote", "--tag", tag, "--accept-schema-change", **settings)
    assert accepted.returncode == 0, explain(accepted)
    assert project.query(PRODUCTION, **settings) == tag
