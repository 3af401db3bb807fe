"""Who promotes a model that passes the gate (promotion.mode): the gate, a person answering the run's form
in the Prefect UI, or nobody (a suggestion); on the suite's Prefect test server."""

import threading
import time
from typing import Any

import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.flows import promote as promote_flow
from ml_lifecycle._internal.registry import aliases, promotion
from prefect import flow
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from ..conftest import clear_alias, make_frame, register


def test_approve_asks_only_in_a_run_of_a_deployment():
    assert promote_flow.who_decides("approve", "3f1c-deployment") == promote_flow.Decider("approve")
    by_hand = promote_flow.who_decides("approve", None)
    assert by_hand.mode == "auto" and "started by hand" in by_hand.note
    for mode in ("auto", "suggest"):
        assert promote_flow.who_decides(mode, None) == promote_flow.Decider(mode)


@pytest.fixture
def judged(csv_settings, task_type) -> tuple[dict, Any, Any]:
    """A candidate's verdict reached but not acted on (no production: it passes), and the gate's rows."""
    clear_alias(csv_settings)
    holdout = make_frame(task_type, rows=200, seed=21)
    features, labels = holdout.drop(columns=["label"]), holdout["label"]
    tag = register(csv_settings, task_type)
    verdict = promotion.promote(csv_settings, tag, features, labels, "test", judge_only=True)
    assert verdict.passed and aliases.read(csv_settings).production is None
    yield verdict.as_dict(), features, labels
    clear_alias(csv_settings)


def decide(verdict: dict, mode: str, features: Any, labels: Any, return_state: bool = False) -> Any:
    """settle() in a flow run of its own (the frames stay out of the run's parameters)."""

    @flow(name="decide")
    def deciding() -> dict:
        return promote_flow.settle(verdict, promote_flow.Decider(mode), features, labels, "test")

    return deciding(return_state=return_state)


def decision_artifact() -> str:
    artifact: Any = Artifact.get("promotion-decision")  # typed as maybe a coroutine; called sync it is not
    assert artifact is not None
    return str(artifact.data)


def answer_when_paused(run_input: dict[str, Any], timeout: float = 120) -> threading.Thread:
    """A person, in another thread: waits for a paused run and resumes it with the form's fields."""

    def answer() -> None:
        deadline = time.monotonic() + timeout
        paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                resume_flow_run(runs[0].id, run_input=run_input)
                return
            time.sleep(0.5)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("prefect_server")
def test_suggest_ends_with_the_command_and_promotes_nothing(judged):
    verdict, features, labels = judged
    result = decide(verdict, "suggest", features, labels)
    command = f"python -m {get_settings().project.package} promote --tag {verdict['candidate']}"
    assert not result["promoted"] and result["decision"] == "suggested" and command in result["why"]
    assert aliases.read(get_settings()).production is None
    assert command in decision_artifact()


@pytest.mark.usefixtures("prefect_server")
def test_an_approval_promotes_and_a_rejection_records_why(judged):
    verdict, features, labels = judged
    person = answer_when_paused({"approve": False, "reason": "not before the audit"})
    result = decide(verdict, "approve", features, labels)
    person.join()
    assert not result["promoted"] and result["why"] == "rejected by a person: not before the audit"
    assert aliases.read(get_settings()).production is None
    assert "rejected by a person: not before the audit" in decision_artifact()

    person = answer_when_paused({"approve": True, "reason": "checked"})
    result = decide(verdict, "approve", features, labels)
    person.join()
    assert result["promoted"] and result["decision"] == "approved"
    record = aliases.read(get_settings())
    assert record.production == verdict["candidate"]
    assert record.history[-1]["reason"] == "test; approved by a person: checked"


@pytest.mark.usefixtures("prefect_server")
def test_no_answer_within_the_timeout_rejects(judged, monkeypatch):
    verdict, features, labels = judged
    monkeypatch.setenv("MY_ML_PROJECT_PROMOTION__APPROVAL_TIMEOUT", "10")
    get_settings.cache_clear()
    state = decide(verdict, "approve", features, labels, return_state=True)
    # Prefect fails a run whose pause timed out ("never resumed"); the rejection is recorded before that.
    assert state.is_failed()
    assert aliases.read(get_settings()).production is None
    assert "no answer within promotion.approval_timeout (10 s)" in decision_artifact()
