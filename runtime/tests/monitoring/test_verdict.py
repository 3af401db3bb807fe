"""The monitor's verdict type: built in one place, and its mapping (what the flow returns to users' scripts)
has the keys of 2.0.0, whether or not the batch had rows enough to judge."""

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest
from ml_lifecycle._internal.monitoring.drift import DataQuality
from ml_lifecycle._internal.monitoring.labels import LabelReadReport
from ml_lifecycle._internal.monitoring.rollout_watch import Evidence, WatchVerdict
from ml_lifecycle._internal.monitoring.verdict import Coverage, LogReport, Rollout, Verdict

from . import verdicts
from .verdicts import KEYS_2_0_0, KEYS_2_0_0_TOO_FEW_ROWS, ROLLOUT_KEYS_2_0_0

SRC = Path(__file__).resolve().parents[2] / "src" / "ml_lifecycle"

EVIDENCE = Evidence("performance", "worse", "roc_auc 0.61 vs 0.80", 0.61, 0.8, 120, 120)
WATCHED = WatchVerdict(
    "roll back", "automatic: roc_auc 0.61 vs 0.80", "p:new", "p:old", "2026-12-06T10:00:00+00:00",
    "2026-12-07T10:00:00+00:00", [EVIDENCE],
)  # fmt: skip


def judged() -> Verdict:
    """A verdict as a run that judged a request-log window with labels leaves it."""
    log = LogReport(
        Coverage("2026-12-05T10:00", "2026-12-06T10:00", 24.0, 2.5, "2026-12-06T07:30", False, "short"),
        skipped_lines=1,
        skipped_where=["requests.jsonl:61 not JSON"],
        warnings=["short", "1 unreadable lines skipped"],
    )
    labels = LabelReadReport("labels.csv", read=120, skipped={"row is blank": 1})
    return verdicts.drifted(log=log, labels=labels, pushed=True, rollout=Rollout.watched(WATCHED))


def test_a_judged_verdicts_mapping_has_the_keys_of_2_0_0_and_is_plain_json():
    found = judged().as_dict()
    assert set(found) == KEYS_2_0_0
    assert json.loads(json.dumps(found)) == found
    assert found["drifted"] is True and found["drift_share"] == 0.4 and found["threshold"] == 0.3
    assert found["columns"][0] == {
        "column": "a", "method": "wasserstein", "score": 0.31, "threshold": 0.1, "drifted": True,
    }  # fmt: skip
    assert found["prediction_drift"]["method"] == "jensenshannon"
    assert found["quality"] == {
        "missing": {},
        "unseen_categories": {},
        "unseen_rows": {},
        "ignored_columns": [],
    }
    assert set(found["quality"]) == set(DataQuality.__dataclass_fields__)
    assert found["performance"] == {
        "metric": "roc_auc", "value": 0.71, "threshold": 0.8, "below_threshold": True, "n_labelled": 300,
        "note": None,
    }  # fmt: skip
    assert found["labels"]["skipped"] == {"row is blank": 1}
    assert found["window"]["covered_hours"] == 2.5 and found["window"]["complete"] is False
    assert (found["skipped_lines"], found["log_warnings"][1]) == (1, "1 unreadable lines skipped")
    assert set(found["rollout"]) == ROLLOUT_KEYS_2_0_0
    assert found["rollout"]["evidence"][0]["name"] == "performance"


def test_too_few_rows_is_the_same_type_with_the_same_keys_and_says_why():
    verdict = verdicts.not_enough(rows=3)
    found = verdict.as_dict()
    assert KEYS_2_0_0_TOO_FEW_ROWS <= set(found) == KEYS_2_0_0
    assert (found["drift_share"], found["drifted"], found["threshold"]) == (0.0, False, None)
    assert (found["columns"], found["drifted_columns"], found["prediction_drift"]) == ([], [], None)
    assert "3 rows, fewer than monitoring.min_rows (100)" in found["quality"]["too_few_rows"]
    assert verdict.reasons() == []
    assert verdict.markdown().startswith("# Drift check: not enough data\n\n")


def test_a_verdict_has_a_drift_result_or_the_reason_it_has_none():
    with pytest.raises(ValueError, match="exactly one"):
        Verdict("m:1", "file.csv", 10)
    with pytest.raises(ValueError, match="exactly one"):
        Verdict("m:1", "file.csv", 10, drift=verdicts.drift_result(), too_few_rows="and yet")


def test_the_verdict_is_built_in_one_place():
    """Every other step fills in what it did (dataclasses.replace); only the check makes a verdict."""
    makers = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Verdict":
                makers.append(path.relative_to(SRC).as_posix())
    assert makers == ["_internal/monitoring/check.py"]


def test_reasons_name_drift_and_performance():
    assert verdicts.drifted().reasons() == [
        "drift: share 0.400 of columns >= 0.3",
        "performance: roc_auc 0.7100 worse than 0.8",
    ]
    assert verdicts.quiet().reasons() == []
    assert verdicts.quiet(performance=verdicts.WORSE).reasons() == [
        "performance: roc_auc 0.7100 worse than 0.8"
    ]


def test_the_artifact_shows_drift_performance_the_logs_warnings_labels_and_the_report():
    text = judged().markdown("[drift.html](http://reports/drift.html)")
    assert text.startswith("# Drift check: DRIFT DETECTED")
    assert "roc_auc = 0.7100 on 300 labelled rows, threshold 0.8 (**below threshold**)" in text
    assert "- **Warning:** 1 unreadable lines skipped" in text
    assert text.endswith("\n\nFull report: [drift.html](http://reports/drift.html)")


def test_the_rollout_result_has_the_keys_of_2_0_0_for_each_outcome():
    watched = Rollout.watched(WATCHED)
    assert set(watched.as_dict()) == ROLLOUT_KEYS_2_0_0 and not watched.to_announce
    rolled_back = replace(
        watched, state="rolled back", retired="p:new", restored="p:old", event_emitted=True, alerted=False
    )
    assert rolled_back.to_announce
    assert set(rolled_back.as_dict()) == ROLLOUT_KEYS_2_0_0 | {
        "retired",
        "restored",
        "event_emitted",
        "alerted",
    }
    failed = Rollout("rollback failed", "automatic: x", "p:new", rollback_error="LookupError: gone")
    assert set(failed.as_dict()) == ROLLOUT_KEYS_2_0_0 | {"rollback_error"}
