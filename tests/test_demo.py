"""The generator's main command: scaffold a project and run its whole lifecycle once, a loop that learns.

`python -m flows.demo DEST` copies the template with default answers, installs the project and runs its
`demo`, which writes DEST/.state/demo/summary.json. This is the loop a new user sees first, so it runs for
real: a local Prefect server, `prefect deploy`, a process worker, BentoML serving, Evidently drift, the
trigger, a retrain on the labelled traffic, the gate's recent slice, and the running service switching models.

It runs twice into the same folder, from one fresh home directory and with no BENTOML_HOME or PREFECT_HOME,
as a user runs the README's command twice: the second run finds the project the first one made and runs
its demo again, whose story starts again from the model it trains. Two projects' state kept apart:
test_state.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, explain, run, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3400)]
# What uv itself keeps in a home directory (its cache points at the machine's own: installs stay offline).
UV_OWN = (".cache/uv", ".local/share/uv", ".config/uv")


@dataclass(frozen=True)
class Run:
    dest: Path
    result: subprocess.CompletedProcess
    summary: dict | None


@dataclass(frozen=True)
class Runs:
    first: Run
    second: Run  # the same command into the same folder
    home: Path
    home_before: set[Path]


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir()}


def main_command(dest: Path, env: dict[str, str]) -> Run:
    result = run(["uv", "run", "python", "-m", "flows.demo", str(dest)], cwd=REPO, env=env, timeout=1600)
    summary_file = dest / ".state" / "demo" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    return Run(dest, result, summary)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """The main command twice into one folder from one fresh home (the user's git identity in it)."""
    root = tmp_path_factory.mktemp("demo")
    home = root / "home"
    home.mkdir()
    if (Path.home() / ".gitconfig").exists():
        shutil.copy(Path.home() / ".gitconfig", home / ".gitconfig")
    before = files_under(home)
    uv_cache = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=True)
    env = subprocess_env(HOME=str(home), UV_CACHE_DIR=uv_cache.stdout.strip())
    env.pop("PREFECT_HOME", None)
    first = main_command(root / "project", env)
    return Runs(first, main_command(first.dest, env), home, before)


@pytest.fixture(scope="module")
def demo(runs):
    """The first run: its process result and the summary it wrote."""
    return runs.first.result, runs.first.summary


def test_the_main_command_passes_again_into_the_same_folder(runs):
    """Before, the second run stopped at "exists and is not empty"; and a project's second demo served the
    first one's retrain on the changed world, its clean traffic showed drift share 1.00 and the demo stopped.
    The demo keeps its story in a store of its own now, emptied at each run."""
    second = runs.second
    assert second.result.returncode == 0, explain(second.result)
    assert "holds the project an earlier run made" in second.result.stdout
    assert second.summary is not None and second.summary["clean"]["event_emitted"] is False, second.summary
    assert second.summary["rollout"]["promoted"], second.summary["rollout"]


def test_the_main_command_refuses_a_folder_it_did_not_make(tmp_path):
    """Nothing of the user's is written over: a folder with other files is refused, naming the way out."""
    (tmp_path / "notes.txt").write_text("mine")
    command = ["uv", "run", "python", "-m", "flows.demo", str(tmp_path)]
    result = run(command, cwd=REPO, env=subprocess_env(), timeout=300)
    assert result.returncode != 0
    assert "is not a project this command made" in result.stderr and "choose another DEST" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_nothing_is_written_in_the_home_directory_but_uvs_own_files(runs):
    written = files_under(runs.home) - runs.home_before
    assert {p for p in written if not str(p).startswith(UV_OWN)} == set()


def test_main_command_succeeds_and_points_at_the_prefect_ui(demo):
    result, summary = demo
    assert result.returncode == 0, explain(result)
    assert "Prefect UI" in result.stdout + result.stderr
    assert summary is not None, "no .state/demo/summary.json was written"
    assert summary["ui_url"].startswith("http://127.0.0.1:")


def test_clean_batch_raises_no_drift_event_and_shifted_batch_does(demo):
    _, summary = demo
    assert summary is not None, "no .state/demo/summary.json was written"
    assert summary["clean"]["event_emitted"] is False
    assert summary["shifted"]["event_emitted"] is True
    assert summary["shifted"]["performance"]["below_threshold"] is True, summary["shifted"]["performance"]


def test_drift_event_starts_a_retrain_run_that_completes(demo):
    _, summary = demo
    assert summary is not None, "no .state/demo/summary.json was written"
    retrain = summary["retrain"]
    assert retrain["state"] == "COMPLETED", retrain
    assert retrain["created_by"] == "AUTOMATION", retrain
    # Prefect renders the trigger's "{{ event.payload.drift_share }}" as a number: the flow's float.
    assert retrain["parameters"]["drift_share"] == pytest.approx(summary["shifted"]["drift_share"])


def test_the_retrained_model_learns_the_changed_world_and_is_served_without_a_failed_request(demo):
    """The retrain learns from the labelled traffic, wins on the recent slice, and the running service
    switches to it under steady traffic; the next window, served by the new model, is healthy again."""
    _, summary = demo
    assert summary is not None, "no .state/demo/summary.json was written"
    rollout = summary["rollout"]
    assert rollout["promoted"] and rollout["new"] != rollout["old"], rollout
    assert rollout["failed_during_switch"] == 0, rollout["failures"]
    assert rollout["answered_during_switch"] > 0
    assert 0 < rollout["seconds_event_to_serving"] < 600
    assert summary["after"]["model_version"] == rollout["new"]
    learning = summary["learning"]
    assert learning["after"] > learning["before"] + 0.2, learning  # ROC AUC: the default task
    assert learning["after_degraded"] is False, learning
