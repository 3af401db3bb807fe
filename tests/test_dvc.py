"""Data versions with DVC, as a user of a project generated with use_dvc runs them: `dvc add` the data,
push it to a remote (a local folder here), lose the data and DVC's cache, `dvc pull`, and `dvc repro`
trains again to the same metrics with the same seed; every model names the DVC hash of its data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ANSWER_SETS, Project, copy_project, explain, with_library

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ANSWERS = ANSWER_SETS["regression_csv"]
DATA = "data/train.csv"

# Run in the project's environment with the package name as argv[1]: the newest model's record.
NEWEST_MODEL = with_library("""
import json, sys
store = internal("registry.store")
settings = internal("config").get_settings()
model = store.load(store.latest_tag(settings))
print(json.dumps({"metrics": model.metadata["metrics"], "data": model.metadata["data_sources"][0]}))
""")


@pytest.fixture(scope="module")
def project(pristine, tmp_path_factory, prefect_home) -> Project:
    """A copy of the session's regression_csv install (its CSV included, not yet under DVC)."""
    assert ANSWERS["use_dvc"] and ANSWERS["data_path"] == DATA
    installed = copy_project(pristine(ANSWERS), tmp_path_factory.mktemp("dvc"), prefect_home)
    added = dvc(installed, "add", DATA)
    assert added.returncode == 0, explain(added)
    return installed


def dvc(project: Project, *args: str):
    return project.run("uv", "run", "dvc", *args)


def fresh(project: Project, name: str) -> dict[str, str]:
    """A model store, shared store and study database of their own: a run that reproduces a model starts
    from nothing."""
    prefix = project.package.upper()
    return {
        "BENTOML_HOME": str(project.root / ".stores" / name),
        f"{prefix}_STORAGE__URL": str(project.root / ".stores" / f"{name}-store"),
        f"{prefix}_TUNING__STORAGE": f"sqlite:///{project.root / '.stores' / f'{name}.db'}",
        f"{prefix}_TUNING__N_TRIALS": "3",
    }


def pointer_md5(project: Project) -> str:
    return yaml.safe_load((project.root / f"{DATA}.dvc").read_text())["outs"][0]["md5"]


def test_the_data_round_trips_through_a_remote_and_retrains_to_the_same_metrics(project, tmp_path):
    first = fresh(project, "first")
    trained = project.cli("train", **first)
    assert trained.returncode == 0, explain(trained)
    before = project.query(NEWEST_MODEL, **first)
    assert before["data"]["dvc_md5"] == pointer_md5(project) and before["data"]["dvc_matches"] is True

    for step in (("remote", "add", "-d", "local", str(tmp_path / "remote")), ("push",)):
        done = dvc(project, *step)
        assert done.returncode == 0, explain(done)
    (project.root / DATA).unlink()
    shutil.rmtree(project.root / ".dvc" / "cache")
    pulled = dvc(project, "pull")
    assert pulled.returncode == 0, explain(pulled)
    assert (project.root / DATA).exists()

    again = fresh(project, "again")
    reproduced = project.run("uv", "run", "dvc", "repro", "--force", **again)  # the dvc.yaml train stage
    assert reproduced.returncode == 0, explain(reproduced)
    after = project.query(NEWEST_MODEL, **again)
    assert after["data"] == before["data"]
    assert after["metrics"] == before["metrics"]


def test_training_on_data_changed_since_dvc_add_says_so(project):
    data = project.root / DATA
    original = data.read_text()
    data.write_text(original + original.splitlines()[1] + "\n")  # one row more, the pointer not updated
    try:
        changed = fresh(project, "changed")
        trained = project.cli("train", **changed)
        assert trained.returncode == 0, explain(trained)
        assert "changed since `dvc add`" in trained.stdout + trained.stderr
        assert project.query(NEWEST_MODEL, **changed)["data"]["dvc_matches"] is False
    finally:
        Path(data).write_text(original)
