"""Promotion and rollback flows: the gate's verdict and the production pointer, visible in the Prefect UI.

Who promotes a model that passes the gate is `promotion.mode` (who_decides): auto, the gate itself; approve,
a person, who answers a form in the Prefect UI while the run waits (pause_flow_run with an Approval input);
suggest, nobody: the run ends with the verdict and the command that promotes. A run that waits for an
answer is always a run of a deployment (or a subflow of one, as train is in retrain), so a server holds the
form and a person can find it; a run started by hand promotes as auto (the person who started it decided).

A promotion emits `<package>.model.promoted` (the running service does not need it: it follows the alias
record itself; it is there for the Prefect UI, automations and anyone else who wants to know)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from ..config import PromotionMode, Settings, get_settings
from ..registry import card as model_card
from ..registry import promotion, store
from ..storage import StorageError
from ..training import feedback, holdout, validation

Mode = PromotionMode
APPROVAL_POLL_SECONDS = 5  # how often a paused run asks the server whether a person answered


class Approval(RunInput):
    """The form a person answers in the Prefect UI to let a candidate become production, or not."""

    approve: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Decider:
    """Who decides this run's promotion: `mode` as applied, and `note`, why it is not promotion.mode."""

    mode: Mode
    note: str = ""


def who_decides(configured: Mode, deployment_id: str | None) -> Decider:
    """promotion.mode for this run: approve needs a run of a deployment (a server holds the form, a person
    finds it in the UI); a run started by hand has no one to wait for but the person who started it, and
    promotes as auto."""
    if configured == "approve" and deployment_id is None:
        return Decider(
            "auto",
            "promotion.mode is approve, but this run was started by hand, not by a deployment: the person "
            "who started it decided, so it promotes as auto",
        )
    return Decider(configured)


def run_decider() -> Decider:
    """who_decides for the current flow run (its deployment, or its parent's for a subflow)."""
    from prefect.runtime import deployment

    decider = who_decides(get_settings().promotion.mode, deployment.id)
    if decider.note:
        get_run_logger().info(decider.note)
    return decider


def promote_command(settings: Settings, tag: str) -> str:
    return f"python -m {settings.project.package} promote --tag {tag}"


def gate_markdown(result: promotion.GateResult, settings: Settings, verdict: str) -> str:
    """The gate's evidence: the verdict, both models' scores per slice, a schema change, the replay."""
    production = f"{result.production_score:.4f}" if result.production_score is not None else "n/a"
    lines = [
        f"# {verdict}: `{result.candidate}`",
        "",
        f"{result.reason}.",
        "",
        f"| model | {result.metric} |",
        "|---|---|",
        f"| candidate `{result.candidate}` | {result.candidate_score:.4f} |",
        f"| production `{result.production}` | {production} |",
    ]
    if result.slices:
        lines += [
            "",
            f"| slice | rows | candidate {result.metric} | production {result.metric} | gain | "
            f"{settings.registry.gate_confidence:.0%} interval | decides |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['slice']} | {s['rows']} | {s['candidate']:.4f} | {s['production']:.4f} | "
            f"{s['gain']:+.4f} | {s['gain_low']:+.4f} to {s['gain_high']:+.4f} | "
            f"{'yes' if s['decides'] else 'no'} |"
            for s in result.slices
        ]
    if result.schema_changes:
        decision = (
            "accepted explicitly (`--accept-schema-change`)"
            if result.schema_change_accepted
            else "not accepted: the gate does not promote a schema change on its own"
        )
        lines += ["", f"## Schema change: {decision}", ""]
        lines += [f"- {change}" for change in result.schema_changes]
    if result.replay is not None:
        lines += ["", replay_markdown(result.replay)]
    return "\n".join(lines)


def replay_markdown(found: dict[str, Any]) -> str:
    from ..registry.replay import Replay

    return Replay(**found).markdown()


def verdict_title(result: promotion.GateResult, mode: Mode) -> str:
    if not result.passed:
        return "NOT PROMOTED"
    return {"auto": "PROMOTED", "approve": "PASSED, WAITING FOR APPROVAL", "suggest": "PASSED, SUGGESTED"}[
        mode
    ]


@task(cache_policy=NO_CACHE)
def gate(
    candidate_tag: str,
    features: pd.DataFrame,
    labels: pd.Series,
    reason: str,
    mode: Mode = "auto",
    **decisions: Any,
) -> dict:
    """Judge and, in mode auto, promote; the verdict (and the per-group table, the replay) become artifacts.
    `decisions` are promotion.promote's keywords (accept_schema_change, allow_rolled_back, recent), passed on
    as given. In modes approve and suggest production is left as it is: settle() asks or suggests."""
    settings = get_settings()
    result = promotion.promote(
        settings, candidate_tag, features, labels, reason, judge_only=mode != "auto", **decisions
    )
    promoted = result.passed and mode == "auto"
    try:  # the model card keeps each verdict
        model_card.record_verdict(settings, result.candidate, result.as_dict() | {"promoted": promoted})
    except StorageError as exc:  # the verdict stands (it may have promoted) whether or not the card says so
        get_run_logger().warning("Could not add the gate's verdict to %s's card: %s", result.candidate, exc)
    create_markdown_artifact(
        key="promotion-gate",
        markdown=gate_markdown(result, settings, verdict_title(result, mode)),
        description="The quality gate between the new model and production",
    )
    if result.groups:
        create_table_artifact(
            key="promotion-groups", table=result.groups, description="Primary metric per sensitive group"
        )
    if result.replay is not None:
        create_markdown_artifact(
            key="replay",
            markdown=replay_markdown(result.replay),
            description=f"{result.candidate} and production {result.production} on recorded requests",
        )
    if result.passed and mode == "auto":
        resource = store.event_resource(settings, result.candidate)
        announce_promotion(settings.promoted_event, resource, result, reason)
    return result.as_dict()


@task(cache_policy=NO_CACHE)
def promote_approved(
    verdict: dict, features: pd.DataFrame, labels: pd.Series, reason: str, **decisions: Any
) -> dict:
    """Promote a verdict a person approved: the same compare-and-swap on the alias as the gate's, judged
    again only when production changed while the run waited."""
    settings = get_settings()
    approved = promotion.GateResult(**verdict)
    result = promotion.promote(
        settings, approved.candidate, features, labels, reason, judged=approved, **decisions
    )
    if result.passed:
        resource = store.event_resource(settings, result.candidate)
        announce_promotion(settings.promoted_event, resource, result, reason)
    return result.as_dict()


def approval_description(settings: Settings, verdict: dict) -> str:
    """What the form in the Prefect UI shows above its fields: the gate's evidence and the model card."""
    result = promotion.GateResult(**verdict)
    parts = [
        gate_markdown(result, settings, "APPROVE OR REJECT"),
        "",
        f"Tick **approve** to make `{result.candidate}` production; leave it unticked to reject it, and say "
        f"why in **reason**. No answer within promotion.approval_timeout "
        f"({settings.promotion.approval_timeout} s) rejects it.",
    ]
    try:
        found = model_card.load(settings, result.candidate)
    except Exception as exc:  # a card that cannot be read must not keep the person from deciding
        get_run_logger().warning("The model card of %s could not be read: %s", result.candidate, exc)
        found = None
    if found is not None:
        parts += ["", model_card.markdown(found)]
    return "\n".join(parts)


def record_decision(settings: Settings, verdict: dict, decision: dict[str, Any]) -> None:
    """The decision where people look: an artifact of the run, and the model card when there is one."""
    tag = verdict["candidate"]
    lines = [f"# {decision['decision'].upper()}: `{tag}`", "", f"{decision['why']}."]
    if decision.get("command"):
        lines += ["", "To promote it:", "", f"    {decision['command']}"]
    lines += ["", f"The gate: {verdict['reason']}."]
    create_markdown_artifact(
        key="promotion-decision",
        markdown="\n".join(lines),
        description=f"Who decided about {tag} (promotion.mode {decision['mode']})",
    )
    entry = decision | {
        "gate": verdict["reason"],
        "production": verdict["production"],
        "promoted": decision["decision"] == "approved",
        "reason": decision["why"],
    }
    try:
        model_card.record_verdict(settings, tag, entry)
    except Exception as exc:  # the decision stands and its artifact says it; the card is the extra copy
        get_run_logger().warning("The decision could not be written to %s's card: %s", tag, exc)


def settle(
    verdict: dict,
    decider: Decider,
    features: pd.DataFrame,
    labels: pd.Series,
    reason: str,
    **decisions: Any,
) -> dict:
    """After the gate, in the flow: in auto nothing more; in suggest the verdict and the command; in approve
    the run pauses for a person's answer (Approval) and promotes on approve. Rejected or unanswered, the
    model stays registered and not production, and the decision says why. Returns the verdict with
    `promoted`, `decision` and `why`."""
    settings = get_settings()
    logger = get_run_logger()
    tag = verdict["candidate"]
    if decider.mode == "auto" or not verdict["passed"]:
        promoted = verdict["passed"] and decider.mode == "auto"
        return verdict | {"promoted": promoted, "decision": "gate", "why": verdict["reason"]}
    command = promote_command(settings, tag)
    if decider.mode == "suggest":
        why = f"it passed the gate; promotion.mode is suggest, so it is not promoted: `{command}` promotes it"
        decision = {"mode": "suggest", "decision": "suggested", "why": why, "command": command}
        logger.warning("%s: %s", tag, why)
        record_decision(settings, verdict, decision)
        return verdict | {"promoted": False, "decision": "suggested", "why": why}
    timeout = settings.promotion.approval_timeout
    form = Approval.with_initial_data(description=approval_description(settings, verdict))
    logger.warning(
        "%s passed the gate: waiting up to %d s for a person's answer in the Prefect UI", tag, timeout
    )
    try:
        answer: Approval | None = pause_flow_run(
            wait_for_input=form, timeout=timeout, poll_interval=APPROVAL_POLL_SECONDS
        )
    except FlowPauseTimeout:
        answer = None
    if answer is None:
        why = f"no answer within promotion.approval_timeout ({timeout} s): rejected; `{command}` promotes it"
        decision = {
            "mode": "approve",
            "decision": "rejected",
            "why": why,
            "by": "timeout",
            "command": command,
        }
    elif not answer.approve:
        why = f"rejected by a person: {answer.reason or 'no reason given'}"
        decision = {
            "mode": "approve",
            "decision": "rejected",
            "why": why,
            "by": "person",
            "command": command,
        }
    else:
        approved = f"{reason}; approved by a person" + (f": {answer.reason}" if answer.reason else "")
        result = promote_approved(verdict, features, labels, approved, **decisions)
        verdict = result
        if result["passed"]:
            why = approved
            decision = {"mode": "approve", "decision": "approved", "why": why, "by": "person"}
        else:  # production changed while the run waited, and the candidate does not beat the new one
            why = f"approved by a person, but judged again against the new production: {result['reason']}"
            decision = {"mode": "approve", "decision": "not promoted", "why": why, "by": "person"}
    (logger.info if decision["decision"] == "approved" else logger.warning)("%s: %s", tag, why)
    record_decision(settings, verdict, decision)
    return verdict | {
        "promoted": decision["decision"] == "approved",
        "decision": decision["decision"],
        "why": why,
    }


def announce_promotion(
    event: str, resource: dict[str, str], result: promotion.GateResult, reason: str
) -> None:
    """Best effort: the promotion has happened whether or not the event reaches the server."""
    try:
        emit_event(
            event=event,
            resource=resource,
            payload={"previous": result.production, "reason": reason, "gate": result.reason},
        )
    except Exception as exc:  # an events connection that fails must not fail a promotion that happened
        get_run_logger().warning("Could not emit %s for %s: %s", event, result.candidate, exc)


Rows = tuple[pd.DataFrame, pd.Series]


def gate_rows() -> tuple[Rows, Rows]:
    """The rows the train flow's gate judges on: the current data's holdout (same split, same seed) and the
    recent slice of labelled traffic."""
    settings = get_settings()
    dataset = validation.load_dataset(settings)
    parts = holdout.split(dataset, settings)
    recent = feedback.load(settings, dataset.frame, dataset.target).recent
    return (parts.test_x, parts.test_y), (recent.drop(columns=[dataset.target]), recent[dataset.target])


@flow(name="promote", log_prints=True)
def promote_model(
    tag: str | None = None,
    reason: str = "manual",
    accept_schema_change: bool = False,
    allow_rolled_back: bool = False,
) -> dict:
    """Put a registered model (the newest by default) through the gate against production.

    `accept_schema_change`: the explicit decision a model with other feature columns than production needs;
    `allow_rolled_back`: the one a model taken out of production by a rollback needs."""
    settings = get_settings()
    (features, labels), recent = gate_rows()
    result = gate(
        tag or store.latest_tag(settings),
        features,
        labels,
        reason,
        accept_schema_change=accept_schema_change,
        allow_rolled_back=allow_rolled_back,
        recent=recent,
    )
    print(f"{'Promoted' if result['passed'] else 'Not promoted'} {result['candidate']}: {result['reason']}")
    return result


@flow(name="rollback", log_prints=True)
def rollback_model(reason: str = "manual") -> str:
    """Make the previous production model production again; returns the restored tag."""
    retired, restored = promotion.rollback(get_settings(), reason)
    get_run_logger().warning("Rolled back: %s retired, %s is production again", retired, restored)
    create_markdown_artifact(
        key="rollback", markdown=f"# Rollback\n\n`{retired}` retired; `{restored}` is production again."
    )
    return restored
