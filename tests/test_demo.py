"""The generator's main command: scaffold a project and run its whole lifecycle once, a loop that learns.

`python -m flows.demo DEST` copies the template with default answers, installs the project and runs its
`demo`, which writes DEST/.demo/summary.json. This is the loop a new user sees first, so it runs for real:
a local Prefect server, `prefect deploy`, a process worker, BentoML serving, Evidently drift, the trigger,
a retrain on the labelled traffic, the gate's recent slice, and the running service switching models.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO, explain, run, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1700)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the main command; returns its process result and the summary it wrote."""
    root = tmp_path_factory.mktemp("demo")
    dest = root / "project"
    env = subprocess_env(PREFECT_HOME=str(root / "prefect-home"), BENTOML_HOME=str(root / "bentoml"))
    result = run(["uv", "run", "python", "-m", "flows.demo", str(dest)], cwd=REPO, env=env, timeout=1500)
    summary_file = dest / ".demo" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    return result, summary


def test_main_command_succeeds_and_points_at_the_prefect_ui(demo):
    result, summary = demo
    assert result.returncode == 0, explain(result)
    assert "Prefect UI" in result.stdout + result.stderr
    assert summary is not None, "no .demo/summary.json was written"
    assert summary["ui_url"].startswith("http://127.0.0.1:")


def test_clean_batch_raises_no_drift_event_and_shifted_batch_does(demo):
    _, summary = demo
    assert summary is not None, "no .demo/summary.json was written"
    assert summary["clean"]["event_emitted"] is False
    assert summary["shifted"]["event_emitted"] is True
    assert summary["shifted"]["performance"]["below_threshold"] is True, summary["shifted"]["performance"]


def test_drift_event_starts_a_retrain_run_that_completes(demo):
    _, summary = demo
    assert summary is not None, "no .demo/summary.json was written"
    retrain = summary["retrain"]
    assert retrain["state"] == "COMPLETED", retrain
    assert retrain["created_by"] == "AUTOMATION", retrain
    # Prefect renders the trigger's "{{ event.payload.drift_share }}" as a number: the flow's float.
    assert retrain["parameters"]["drift_share"] == pytest.approx(summary["shifted"]["drift_share"])


def test_the_retrained_model_learns_the_changed_world_and_is_served_without_a_failed_request(demo):
    """The retrain learns from the labelled traffic, wins on the recent slice, and the running service
    switches to it under steady traffic; the next window, served by the new model, is healthy again."""
    _, summary = demo
    assert summary is not None, "no .demo/summary.json was written"
    rollout = summary["rollout"]
    assert rollout["promoted"] and rollout["new"] != rollout["old"], rollout
    assert rollout["failed_during_switch"] == 0, rollout["failures"]
    assert rollout["answered_during_switch"] > 0
    assert 0 < rollout["seconds_event_to_serving"] < 600
    assert summary["after"]["model_version"] == rollout["new"]
    learning = summary["learning"]
    assert learning["after"] > learning["before"] + 0.2, learning  # ROC AUC: the default task
    assert learning["after_degraded"] is False, learning
