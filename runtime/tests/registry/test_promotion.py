"""The gate between a new model and production, and the way back, on a real (throwaway) BentoML store."""

import threading

import numpy as np
import pandas as pd
import pytest
from ml_lifecycle._internal.local import demo_traffic
from ml_lifecycle._internal.registry import aliases, promotion, store
from ml_lifecycle._internal.training.metrics import METRICS

from ..conftest import make_frame, register


@pytest.fixture
def no_production(csv_settings, tmp_path):
    """Settings with a store of this test's own: no production record, and no request log, or the replay
    before promotion would judge on what other tests served (which tests ran before in this process
    varies with two workers)."""
    storage = csv_settings.storage.model_copy(update={"url": str(tmp_path / "store")})
    return csv_settings.model_copy(update={"storage": storage})


@pytest.fixture
def holdout(task_type):
    frame = make_frame(task_type, rows=200, seed=21)
    return frame.drop(columns=["label"]), frame["label"]


def test_the_first_model_becomes_production(no_production, holdout, task_type):
    tag = register(no_production, task_type)
    result = promotion.promote(no_production, tag, *holdout, reason="test")
    assert result.passed and result.reason == "no production model yet"
    assert aliases.production_tag(no_production) == tag


def test_a_worse_candidate_is_not_promoted(no_production, holdout, task_type):
    good = register(no_production, task_type)
    promotion.promote(no_production, good, *holdout, reason="test")
    worse = register(no_production, task_type, scrambled=True)
    result = promotion.promote(no_production, worse, *holdout, reason="test")
    assert not result.passed
    assert "does not beat production" in result.reason
    assert aliases.production_tag(no_production) == good


def test_rollback_restores_the_previous_production_model(no_production, holdout, task_type):
    worse = register(no_production, task_type, scrambled=True)
    better = register(no_production, task_type)
    assert promotion.promote(no_production, worse, *holdout, reason="test").passed
    assert promotion.promote(no_production, better, *holdout, reason="test").passed
    assert promotion.rollback(no_production) == (better, worse)
    assert aliases.production_tag(no_production) == worse
    with pytest.raises(LookupError, match="nothing to roll back to"):
        promotion.rollback(no_production)


def test_a_rolled_back_model_is_promoted_again_only_by_a_persons_decision(no_production, holdout, task_type):
    """No ping-pong: the gate alone never brings back a model a rollback took out, however it scores."""
    first, second = register(no_production, task_type, scrambled=True), register(no_production, task_type)
    promotion.promote(no_production, first, *holdout, reason="test")
    promotion.promote(no_production, second, *holdout, reason="test")
    promotion.rollback(no_production, reason="worse live")
    refused = promotion.promote(no_production, second, *holdout, reason="retrain")
    assert not refused.passed and "--allow-rolled-back" in refused.reason and "worse live" in refused.reason
    assert aliases.production_tag(no_production) == first
    assert promotion.promote(no_production, second, *holdout, reason="person", allow_rolled_back=True).passed
    assert aliases.production_tag(no_production) == second


def test_two_promotions_at_once_leave_the_best_model_in_production(no_production, holdout, task_type):
    worse = register(no_production, task_type, scrambled=True)
    promotion.promote(no_production, worse, *holdout, reason="test")
    candidates = [register(no_production, task_type, depth=depth) for depth in (2, 8)]
    threads = [
        threading.Thread(
            target=promotion.promote, args=(no_production, tag, *holdout), kwargs={"reason": "race"}
        )
        for tag in candidates
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = aliases.read(no_production).as_json()
    tags = [entry["tag"] for entry in record["history"]]
    assert tags[0] == worse and len(tags) == len(set(tags))
    judged = [promotion.judge(no_production, store.load(tag), None, *holdout) for tag in candidates]
    scores = {result.candidate: result.candidate_score for result in judged}
    best = max(scores, key=scores.get) if task_type == "classification" else min(scores, key=scores.get)
    assert aliases.production_tag(no_production) == best


def test_a_gap_between_sensitive_groups_blocks_promotion(no_production, holdout, task_type, monkeypatch):
    monkeypatch.setattr(no_production.registry, "sensitive_column", "color")
    monkeypatch.setattr(no_production.registry, "max_group_gap", 0.0)
    result = promotion.promote(no_production, register(no_production, task_type), *holdout, reason="test")
    assert not result.passed
    assert "between groups of 'color'" in result.reason
    assert {group["group"] for group in result.groups} >= {"red", "green", "blue"}
    assert np.isfinite([g[result.metric] for g in result.groups if g[result.metric] is not None]).all()
    with pytest.raises(LookupError, match="no production model"):
        aliases.production_tag(no_production)


def test_a_schema_change_needs_an_explicit_decision(no_production, holdout, task_type):
    """Production needs `weight`, which the new data no longer has: it cannot be compared, so the gate does
    not promote on its own; the explicit decision does, and the record says why."""
    production = register(no_production, task_type)
    promotion.promote(no_production, production, *holdout, reason="test")
    candidate = register(no_production, task_type, drop=("weight",))
    features, labels = holdout[0].drop(columns=["weight"]), holdout[1]
    refused = promotion.promote(no_production, candidate, features, labels, reason="retrain")
    assert not refused.passed
    assert refused.schema_changes == ["column 'weight' is gone"]
    assert refused.reason.startswith("schema changed (column 'weight' is gone); promote explicitly with")
    assert f"promote --tag {candidate} --accept-schema-change" in refused.reason
    assert aliases.production_tag(no_production) == production
    accepted = promotion.promote(
        no_production, candidate, features, labels, reason="new schema", accept_schema_change=True
    )
    assert accepted.passed and accepted.schema_change_accepted
    assert aliases.production_tag(no_production) == candidate
    assert aliases.read(no_production).history[-1]["schema_changes"] == ["column 'weight' is gone"]
    assert aliases.read(no_production).history[-1]["reason"] == "new schema"  # the reason asked, kept
    assert promotion.rollback(no_production) == (candidate, production)


def test_a_new_column_is_a_schema_change_even_when_production_can_score(no_production, holdout, task_type):
    production = register(no_production, task_type, drop=("weight",))
    promotion.promote(no_production, production, *holdout, reason="test")
    candidate = register(no_production, task_type)
    result = promotion.promote(no_production, candidate, *holdout, reason="retrain")
    assert not result.passed and result.schema_changes == ["column 'weight' is new"]
    assert aliases.production_tag(no_production) == production


def test_an_accepted_schema_change_still_has_to_beat_production_when_both_can_score(
    no_production, holdout, task_type
):
    production = register(no_production, task_type, drop=("weight",))
    promotion.promote(no_production, production, *holdout, reason="test")
    worse = register(no_production, task_type, scrambled=True)
    result = promotion.promote(no_production, worse, *holdout, reason="retrain", accept_schema_change=True)
    assert not result.passed and "does not beat production" in result.reason


def scores(name: str, rows: int, candidate: float, production: float, spread: float = 0.01) -> dict:
    """A compared slice as compared_slice gives it: both scores, the gain and its interval."""
    gain = candidate - production
    return {
        "slice": name,
        "rows": rows,
        "candidate": candidate,
        "production": production,
        "gain": gain,
        "gain_low": gain - spread,
        "gain_high": gain + spread,
        "decides": False,
    }


@pytest.mark.parametrize(
    ("holdout_scores", "recent_scores", "passed", "decides"),
    [
        # Better now, as good as before: promoted on the recent slice.
        ((0.90, 0.90), (0.95, 0.60), True, "recent slice"),
        # Better now, but surely much worse on the holdout: the loss there blocks it.
        ((0.80, 0.90), (0.95, 0.60), False, "recent slice"),
        # Better now, a little worse on the holdout within its noise (the interval reaches above 0).
        ((0.897, 0.900, 0.03), (0.95, 0.60), True, "recent slice"),
        # Better on the holdout, worse now: the recent slice decides, not promoted.
        ((0.95, 0.90), (0.60, 0.90), False, "recent slice"),
    ],
)
def test_the_recent_slice_decides_and_the_holdout_may_not_be_surely_lost(
    settings, holdout_scores, recent_scores, passed, decides
):
    held, recent = scores("holdout", 200, *holdout_scores), scores("recent slice", 60, *recent_scores)
    verdict, reason = promotion.decide(held, recent, settings, METRICS["roc_auc"])
    assert verdict is passed, reason
    assert [s["slice"] for s in (held, recent) if s["decides"]] == [decides]
    assert "recent slice (60 rows)" in reason and "holdout (200 rows)" in reason


def test_a_small_recent_slice_leaves_the_decision_to_the_holdout(settings):
    held, recent = scores("holdout", 200, 0.95, 0.90), scores("recent slice", 5, 0.95, 0.60)
    verdict, reason = promotion.decide(held, recent, settings, METRICS["roc_auc"])
    assert verdict and held["decides"] and not recent["decides"], reason


def test_the_gate_scores_both_slices(no_production, holdout, task_type):
    first = register(no_production, task_type, scrambled=True)
    promotion.promote(no_production, first, *holdout, reason="test")
    candidate = register(no_production, task_type)
    newest = make_frame(task_type, rows=80, seed=33)
    recent = newest.drop(columns=["label"]), newest["label"]
    result = promotion.promote(no_production, candidate, *holdout, reason="test", recent=recent)
    assert result.passed, result.reason
    assert [(s["slice"], s["rows"], s["decides"]) for s in result.slices] == [
        ("holdout", 200, False),
        ("recent slice", 80, True),
    ]


def world(task_type: str, rows: int, seed: int, *, changed: bool = False, noise: float = 0.0) -> pd.DataFrame:
    """Rows of the world as it was, or as it changed (numbers shifted, the target's relationship to them
    changed, as in the demo), with a share `noise` of the labels wrong (the other class; for regression,
    another row's value)."""
    frame = make_frame(task_type, rows=rows, seed=seed)
    if changed:
        reference = make_frame(task_type, seed=3).drop(columns=["label"])
        labels = demo_traffic.changed_relationship(frame["label"], task_type)
        frame = demo_traffic.shift_numbers(frame.drop(columns=["label"]), reference).assign(label=labels)
    wrong = frame.sample(frac=noise, random_state=seed).index
    if task_type == "classification":
        frame.loc[wrong, "label"] = 1 - frame.loc[wrong, "label"]
    else:
        frame.loc[wrong, "label"] = frame["label"].sample(len(wrong), random_state=seed + 1).to_numpy()
    return frame


def xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return frame.drop(columns=["label"]), frame["label"]


def test_at_10_percent_label_noise_a_clearly_better_candidate_is_promoted_a_worse_one_not(
    no_production, monkeypatch
):
    """The issue's story (ROC AUC, so a classifier whatever this project's task): on a 114-row holdout
    with 10% wrong labels a candidate that learnt the changed world loses a little there, within the
    holdout's noise, and wins by far on the recent slice: promoted. One that surely loses the holdout, or
    does not beat production now, is still refused."""
    task_type = "classification"
    monkeypatch.setattr(no_production.data, "task_type", task_type)
    production = register(no_production, task_type)
    promotion.promote(no_production, production, *xy(world(task_type, 114, 21)), reason="test")
    holdout = xy(world(task_type, 114, 21, noise=0.1))
    recent = xy(world(task_type, 60, 60, changed=True, noise=0.1))
    old, new = make_frame(task_type, seed=3), world(task_type, 200, 40, changed=True)
    forgetful = register(no_production, task_type, frame=new)  # the changed world only
    refused = promotion.promote(no_production, forgetful, *holdout, reason="retrain", recent=recent)
    assert not refused.passed and "loses more than 0.0" in refused.reason, refused.reason
    same = register(no_production, task_type)  # production's twin: no better now
    refused = promotion.promote(no_production, same, *holdout, reason="retrain", recent=recent)
    assert not refused.passed and "does not beat production" in refused.reason, refused.reason
    better = register(no_production, task_type, frame=pd.concat([old, new], ignore_index=True))
    result = promotion.promote(no_production, better, *holdout, reason="retrain", recent=recent)
    held, newest = result.slices
    assert held["gain"] < 0 < newest["gain"] - 0.2, result.slices  # loses a little, wins by far
    assert result.passed and "does not surely lose more than 0.0" in result.reason, result.reason
    assert aliases.production_tag(no_production) == better


def test_a_rolled_back_model_under_a_new_tag_counts_as_it(no_production, task_type):
    """A retrain on the same rows gives the rolled-back model again under another tag: it predicts like
    the retired model on the recent rows, so the gate refuses it as it refuses the retired model. A model
    that learnt something else is judged as usual."""
    first, second = register(no_production, task_type, scrambled=True), register(no_production, task_type)
    holdout = xy(world(task_type, 114, 21))
    promotion.promote(no_production, first, *holdout, reason="test")
    promotion.promote(no_production, second, *holdout, reason="test")
    promotion.rollback(no_production, reason="automatic: worse live")
    again = register(no_production, task_type)  # the same study's best parameters on the same rows
    recent = xy(world(task_type, 60, 60))
    refused = promotion.promote(no_production, again, *holdout, reason="retrain", recent=recent)
    assert not refused.passed, refused.reason
    assert refused.reason.startswith(f"counts as {second}, rolled back at ")
    assert "(automatic: worse live)" in refused.reason and "of 60 recent rows" in refused.reason
    assert "--allow-rolled-back" in refused.reason
    assert aliases.production_tag(no_production) == first
    other = register(no_production, task_type, frame=world(task_type, 240, 5, changed=True))
    judged = promotion.promote(no_production, other, *holdout, reason="retrain", recent=recent)
    assert not judged.reason.startswith("counts as"), judged.reason


def test_a_rollback_already_done_by_another_run_says_so(no_production, task_type):
    first, second = register(no_production, task_type, scrambled=True), register(no_production, task_type)
    holdout = xy(world(task_type, 114, 21))
    promotion.promote(no_production, first, *holdout, reason="test")
    promotion.promote(no_production, second, *holdout, reason="test")
    assert promotion.rollback(no_production, reason="automatic", expected=second) == (second, first)
    with pytest.raises(promotion.AlreadyRolledBack, match=f"{second} was rolled back already at "):
        promotion.rollback(no_production, reason="automatic", expected=second)
    assert aliases.production_tag(no_production) == first
