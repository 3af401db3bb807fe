"""Following the production alias from a service worker: a broken record is a metric and one log line (not a
traceback every poll) while the served model stays, and a `latest` alias is resolved to its version, so the
model is loaded again only when production really changed."""

import json
import logging

import bentoml
import pytest
from ml_lifecycle._internal.registry import aliases
from ml_lifecycle._internal.serving.production_poll import ProductionPoll
from ml_lifecycle._internal.storage import open_storage
from sklearn.dummy import DummyClassifier

POLL_LOGGER = "ml_lifecycle._internal.serving.production_poll"


class Level:
    """Stands in for the Prometheus gauge, so each test sees only its own value."""

    def __init__(self):
        self.value = None

    def set(self, value):
        self.value = value


@pytest.fixture
def record(settings):
    """The alias record's object in the suite's store (a folder, so a file), put back as it was after the
    test."""
    path = open_storage(settings).local_root / aliases.key(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = path.read_bytes() if path.exists() else None
    yield path
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(saved)


def promote(path, *tags):
    path.write_text(json.dumps({"history": [aliases.entry(tag, "test") for tag in tags], "rolled_back": []}))


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ('{"history": [', "not JSON"),
        ('{"rolled_back": []}', "no history list"),
        ('{"history": [{"since": "2026-01-01"}]}', "no tag in history entry 1"),
        (
            '{"history": [{"tag": "m:v1"}], "rolled_back": [{"reason": "worse"}]}',
            "no tag in rolled_back entry 1",
        ),
    ],
)
def test_a_broken_alias_record_is_a_metric_and_one_log_line_and_the_model_stays(
    settings, record, caplog, content, cause
):
    promote(record, "m:v1")
    level = Level()
    poll = ProductionPoll(settings, valid=level, resolve=str)
    assert poll.next_tag("m:v1") is None and level.value == 1
    record.write_text(content)  # a hand edit gone wrong, a copy cut short
    with caplog.at_level(logging.INFO, logger=POLL_LOGGER):
        assert [poll.next_tag("m:v1") for _ in range(5)] == [None] * 5  # the served model stays
        assert level.value == 0
        promote(record, "m:v1")  # restored
        assert poll.next_tag("m:v1") is None
    assert level.value == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once, not every poll
    message = errors[0].getMessage()
    assert cause in message and str(record) in message and "still serving m:v1" in message
    assert not errors[0].exc_info  # one line, no traceback
    assert "again" in caplog.records[-1].getMessage()  # and once when it is readable again


def test_reading_a_broken_record_elsewhere_raises_an_error_naming_what_is_missing(settings, record):
    record.write_text('{"history": [{"since": "2026-01-01"}]}')
    with pytest.raises(aliases.AliasRecordError, match="no tag in history entry 1"):
        aliases.production_tag(settings)


def test_an_alias_of_latest_is_resolved_so_the_model_is_loaded_again_only_when_it_changes(settings, record):
    name = "poll_test_model"
    first = str(bentoml.sklearn.save_model(name, DummyClassifier()).tag)
    promote(record, f"{name}:latest")
    poll = ProductionPoll(settings, valid=Level())
    assert poll.next_tag("another_model:v0") == first  # production is another model: swap to it
    assert [poll.next_tag(first) for _ in range(3)] == [None] * 3  # serving what latest names: no reload
    second = str(bentoml.sklearn.save_model(name, DummyClassifier()).tag)
    assert poll.next_tag(first) == second
