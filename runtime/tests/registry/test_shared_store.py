"""Models and the production alias on the project's store (storage.url), as several machines share them:
each model exported once and imported where it is needed, the alias changed only by compare-and-swap, on the
folder backend with processes racing and on an S3-compatible server (moto on 127.0.0.1), and bad stores
refused with one line while nothing is promoted and a service keeps its model."""

import json
import logging
import subprocess
import sys
import textwrap

import bentoml
import httpx
import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.registry import aliases, promotion, store
from ml_lifecycle._internal.serving.production_poll import ProductionPoll
from ml_lifecycle._internal.storage import StorageError, open_storage

from ..conftest import PACKAGE, clear_alias, make_frame, register
from ..test_storage import _free_port

ENV = PACKAGE.upper()


class Level:
    """Stands in for the Prometheus gauge, so each test sees only its own value."""

    def __init__(self) -> None:
        self.value: int | None = None

    def set(self, value: int) -> None:
        self.value = value


def on_store(monkeypatch, url: str):
    """The suite's settings (CSV data) with storage.url set to `url`."""
    monkeypatch.setenv(f"{ENV}_STORAGE__URL", url)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(params=["folder", "s3"])
def shared(request, csv_settings, monkeypatch, tmp_path):
    """Settings on a store of their own: a folder, or a bucket on the S3 server."""
    if request.param == "folder":
        settings = on_store(monkeypatch, str(tmp_path / "store"))
    else:
        server = request.getfixturevalue("s3_environ")
        settings = on_store(monkeypatch, f"s3://{server.bucket()}/team/project")
    yield settings
    clear_alias(settings)


@pytest.fixture
def s3_shared(csv_settings, s3_environ, monkeypatch):
    settings = on_store(monkeypatch, f"s3://{s3_environ.bucket()}/team/project")
    yield settings
    clear_alias(settings)


@pytest.fixture
def holdout(task_type):
    frame = make_frame(task_type, rows=200, seed=21)
    return frame.drop(columns=["label"]), frame["label"]


def test_a_saved_model_is_exported_once_and_a_second_export_changes_nothing(shared, task_type):
    tag = register(shared, task_type)
    storage = open_storage(shared)
    first = storage.read(store.model_key(tag))
    assert first is not None and first.data  # save() exported it
    assert not store.publish(shared, tag)  # the same tag again: a no-op, never an overwrite
    assert storage.read(store.model_key(tag)).version == first.version
    assert store.latest_tag(shared) == tag


def test_a_model_this_process_lacks_is_imported_from_the_store_on_first_need(shared, task_type):
    tag = register(shared, task_type)
    bentoml.models.delete(tag)  # as on a machine that never saw the training
    loaded = store.load(tag, shared)
    assert loaded.tag == tag and loaded.schema
    assert str(bentoml.models.get(tag).tag) == tag


def test_a_rollback_racing_a_promotion_is_judged_again_and_neither_is_lost(
    shared, holdout, task_type, monkeypatch
):
    """Another machine rolls back between this promotion's read and its write: the write is refused (412 on
    S3, a stale version on the folder), the promotion runs again on the record as the rollback left it,
    judged against the production that is now there, and both changes are in the record."""
    older = register(shared, task_type, scrambled=True)
    newer = register(shared, task_type, scrambled=True, depth=3)
    candidate = register(shared, task_type)
    for tag in (older, newer):
        aliases.change(shared, lambda record, tag=tag: record.history.append(aliases.entry(tag, "test")))
    judged_against = []
    real_judge = promotion.judge

    def judge_while_another_machine_rolls_back(settings, cand, production, *args, **kwargs):
        judged_against.append(production.tag)
        if len(judged_against) == 1:
            assert promotion.rollback(settings, reason="other machine") == (newer, older)
        return real_judge(settings, cand, production, *args, **kwargs)

    monkeypatch.setattr(promotion, "judge", judge_while_another_machine_rolls_back)
    result = promotion.promote(shared, candidate, *holdout, reason="retrain")
    assert judged_against == [newer, older]  # judged again, against the production now there
    assert result.passed and result.production == older
    record = aliases.read(shared)
    assert [e["tag"] for e in record.history] == [older, candidate]
    assert [(e["tag"], e["reason"]) for e in record.rolled_back] == [(newer, "other machine")]


RACER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import my_ml_project
    from ml_lifecycle._internal.config import get_settings
    from ml_lifecycle._internal.registry import promotion
    from ml_lifecycle.testing import example_frame

    role, go, tags = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    settings = get_settings()
    frame = example_frame(settings.data.task_type, rows=200, seed=21)
    features, labels = frame.drop(columns=["label"]), frame["label"]
    deadline = time.monotonic() + 120
    while not go.exists():  # both racers start together
        assert time.monotonic() < deadline, "no start signal"
        time.sleep(0.01)
    done = []
    if role == "promote":
        for n, tag in enumerate(tags):
            result = promotion.promote(settings, tag, features, labels, f"race {n}", allow_rolled_back=True)
            done.append({"promoted": tag, "passed": result.passed})
        Path(sys.argv[2] + ".done").touch()
    else:  # roll back while the promotions go on (a pause between tries, so the other racer gets the cores)
        while not Path(sys.argv[2] + ".done").exists():
            try:
                retired, restored = promotion.rollback(settings, reason=f"race {len(done)}")
                done.append({"retired": retired, "restored": restored})
            except LookupError:
                pass
            time.sleep(0.05)
    print(json.dumps(done))
    """
)


def test_promote_and_rollback_racing_from_two_processes_lose_nothing(
    csv_settings, task_type, monkeypatch, tmp_path
):
    """The folder backend's compare-and-swap under real concurrency: every promotion that passed is in the
    record once (production history, or rolled back), every rollback retired exactly one entry, and the
    history is a valid sequence (no tag twice)."""
    settings = on_store(monkeypatch, str(tmp_path / "store"))
    # Every candidate passes the gate, so the race is between writes, not verdicts.
    monkeypatch.setenv(f"{ENV}_REGISTRY__PROMOTION_MARGIN", "0")
    first = register(settings, task_type, scrambled=True)
    aliases.change(settings, lambda record: record.history.append(aliases.entry(first, "seed")))
    candidates = [register(settings, task_type, depth=2 + n % 5) for n in range(8)]
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, role, str(go), *tags], stdout=subprocess.PIPE, text=True
        )
        for role, tags in (("promote", candidates), ("rollback", []))
    ]
    go.touch()
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    promoted_runs, rollback_runs = (json.loads(output.splitlines()[-1]) for output in outputs)
    promoted = [run["promoted"] for run in promoted_runs if run["passed"]]
    rollbacks = [run for run in rollback_runs if "retired" in run]
    record = aliases.read(get_settings())
    history = [entry["tag"] for entry in record.history]
    rolled_back = [entry["tag"] for entry in record.rolled_back]
    assert len(history) == len(set(history)) and history[0] == first
    assert len(history) == 1 + len(promoted) - len(rollbacks)
    assert sorted(rolled_back) == sorted(run["retired"] for run in rollbacks)
    assert sorted(history[1:] + rolled_back) == sorted(promoted)  # every promotion, once
    assert len(promoted) >= 2 and rollbacks, (promoted_runs, rollback_runs)  # both really ran


CROSS_HOME = textwrap.dedent(
    """
    import json, sys
    import bentoml
    import my_ml_project
    from ml_lifecycle._internal.config import get_settings
    from ml_lifecycle._internal.registry import aliases, promotion, store
    from ml_lifecycle._internal.serving import batch_scoring, service
    from ml_lifecycle.testing import example_frame

    settings = get_settings()
    production, candidate, rows, scored = sys.argv[1:5]
    assert str(settings.bentoml_home) != sys.argv[5], "the same BentoML store as the trainer"
    seen = {t: bool(bentoml.models.list(t)) for t in (production, candidate)}
    found = aliases.production_tag(settings)
    result = batch_scoring.score_file(settings, rows, scored)
    predictor = service.build()  # what `bentoml serve` does first: the model by tag, its schema
    frame = example_frame(settings.data.task_type, rows=200, seed=21)
    verdict = promotion.promote(
        settings, candidate, frame.drop(columns=["label"]), frame["label"], "from the other machine"
    )
    print(json.dumps({
        "seen_before": seen, "production": found, "scored": result.model_version,
        "service": predictor.name, "promoted": verdict.passed,
    }))
    """
)


def test_two_bentoml_homes_sharing_one_s3_store_see_each_others_models_and_alias(
    s3_shared, task_type, tmp_path, monkeypatch
):
    """A trainer here, another machine in a subprocess with a BentoML home that never saw the training: it
    reads the alias, scores a file and builds the service with the production model, and promotes the
    trainer's candidate; the trainer then reads that promotion."""
    production = register(s3_shared, task_type, scrambled=True)
    aliases.change(s3_shared, lambda record: record.history.append(aliases.entry(production, "train")))
    candidate = register(s3_shared, task_type)
    rows = tmp_path / "rows.csv"
    make_frame(task_type, rows=20, seed=5).drop(columns=["label"]).to_csv(rows, index=False)
    trainers, home = str(s3_shared.bentoml_home), tmp_path / "other-machine-bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    monkeypatch.delenv(f"{ENV}_REGISTRY__BENTOML_HOME", raising=False)
    args = [production, candidate, str(rows), str(tmp_path / "scored.csv"), trainers]
    run = subprocess.run(
        [sys.executable, "-c", CROSS_HOME, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen["seen_before"] == {production: False, candidate: False}
    assert seen["production"] == production and seen["scored"] == production
    assert seen["promoted"]
    assert {p.name for p in (home / "models" / PACKAGE).iterdir()} >= {
        production.split(":")[1],
        candidate.split(":")[1],
    }
    assert aliases.production_tag(s3_shared) == candidate  # the promotion made there, read here
    assert aliases.read(s3_shared).history[-1]["reason"] == "from the other machine"


def test_a_2_0_record_beside_the_bentoml_store_is_taken_over_once(shared, task_type, caplog):
    tag = register(shared, task_type)
    legacy = aliases.legacy_file(shared)
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text(json.dumps({"history": [aliases.entry(tag, "2.0")], "rolled_back": []}))
    try:
        with caplog.at_level(logging.INFO, logger=aliases.__name__):
            assert aliases.production_tag(shared) == tag
            assert aliases.production_tag(shared) == tag
        took = [r.getMessage() for r in caplog.records if "Took over" in r.getMessage()]
        assert len(took) == 1 and str(legacy) in took[0], took
        # once: later changes live in the store, and the file is not read again
        aliases.change(shared, lambda record: record.history.append(aliases.entry(tag + "x", "later")))
        assert not aliases.take_over(shared)
        assert aliases.production_tag(shared) == tag + "x"
    finally:
        legacy.unlink(missing_ok=True)


def test_a_foreign_object_as_the_alias_record_names_its_key_and_nothing_is_promoted(
    shared, holdout, task_type
):
    tag = register(shared, task_type)
    storage = open_storage(shared)
    storage.write(aliases.key(shared), b"<html>not ours</html>")
    with pytest.raises(aliases.AliasRecordError) as error:
        promotion.promote(shared, tag, *holdout, reason="test")
    message = str(error.value)
    assert storage.url_of(aliases.key(shared)) in message and "not JSON" in message and "\n" not in message
    assert storage.read_bytes(aliases.key(shared)) == b"<html>not ours</html>"


def test_a_foreign_object_as_a_model_names_its_key(shared, task_type):
    tag = register(shared, task_type)
    bentoml.models.delete(tag)
    storage = open_storage(shared)
    storage.delete(store.model_key(tag))
    storage.write(store.model_key(tag), b"not a model archive")
    with pytest.raises(StorageError) as error:
        store.load(tag, shared)
    message = str(error.value)
    assert storage.url_of(store.model_key(tag)) in message and "not a BentoML model archive" in message
    assert "\n" not in message
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get(tag)  # nothing half-imported


def test_a_model_in_neither_store_is_one_line_naming_the_key(shared):
    with pytest.raises(store.ModelNotFound) as error:
        store.load(f"{shared.model_name}:neverexisted", shared)
    assert "storage.url" in str(error.value) and "models/" in str(error.value)


@pytest.fixture
def refused_credentials(s3_environ):
    """The S3 server checking signatures from now on: the test credentials are unknown to it."""
    httpx.post(f"{s3_environ.endpoint}/moto-api/reset-auth", content=b"0", timeout=10).raise_for_status()
    yield
    httpx.post(f"{s3_environ.endpoint}/moto-api/reset-auth", content=b"inf", timeout=10).raise_for_status()


def bad_store(kind: str, request, monkeypatch) -> str:
    """storage.url and the variables for one kind of store that cannot be used."""
    if kind == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv(f"{ENV}_STORAGE__TIMEOUT_SECONDS", "3")
        return "s3://bucket/project"
    server = request.getfixturevalue("s3_environ")
    if kind == "no bucket":
        return "s3://no-such-bucket/project"
    bucket = server.bucket()
    request.getfixturevalue("refused_credentials")
    return f"s3://{bucket}/project"


HINTS = {
    "unreachable": "AWS_ENDPOINT_URL",
    "no bucket": "bucket does not exist",
    "wrong credentials": "AWS_ACCESS_KEY_ID",
}


@pytest.mark.parametrize("kind", list(HINTS))
def test_a_store_that_cannot_be_used_is_one_line_and_the_service_keeps_its_model(
    kind, production, holdout, task_type, request, monkeypatch, caplog
):
    """The suite's production model is served; then storage.url points at a store that cannot be used: the
    service's poll logs one line naming storage.url and keeps its model, and a promotion fails with that
    line and writes nothing."""
    served = production
    settings = on_store(monkeypatch, bad_store(kind, request, monkeypatch))
    level = Level()
    poll = ProductionPoll(settings, valid=level, resolve=str)
    with caplog.at_level(logging.INFO, logger="ml_lifecycle._internal.serving.production_poll"):
        assert [poll.next_tag(served) for _ in range(3)] == [None] * 3  # the served model stays
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and level.value == 0, errors
    assert f"storage.url = {settings.storage.url!r}" in errors[0] and HINTS[kind] in errors[0]
    assert f"still serving {served}" in errors[0] and "\n" not in errors[0]
    with pytest.raises(StorageError, match=HINTS[kind]) as error:
        promotion.promote(settings, served, *holdout, reason="test")
    assert "\n" not in str(error.value)


def test_a_broken_store_record_after_a_good_one_leaves_the_poll_serving(shared, task_type):
    tag = register(shared, task_type)
    aliases.change(shared, lambda record: record.history.append(aliases.entry(tag, "test")))
    level = Level()
    poll = ProductionPoll(shared, valid=level)
    assert poll.next_tag("m:other") == tag and level.value == 1
    open_storage(shared).write(aliases.key(shared), b'{"history": [{"since": "now"}]}')
    assert poll.next_tag(tag) is None and level.value == 0


def test_a_replica_swaps_to_a_model_promoted_on_another_machine_by_importing_it(shared, task_type):
    """What a service worker's poll does when the new production model was trained elsewhere: the version
    is imported into its BentoML store before it is named for the swap."""
    served, promoted = register(shared, task_type), register(shared, task_type, depth=3)
    bentoml.models.delete(promoted)  # trained on another machine
    for tag in (served, promoted):
        aliases.change(shared, lambda record, tag=tag: record.history.append(aliases.entry(tag, "test")))
    poll = ProductionPoll(shared, valid=Level())
    assert poll.next_tag(served) == promoted
    assert str(bentoml.models.get(promoted).tag) == promoted


def test_the_command_line_says_a_store_problem_in_one_line(csv_settings, s3_environ, monkeypatch, capsys):
    """`serve` reads the alias before anything starts: a missing bucket is one line, no traceback."""
    from ml_lifecycle._internal.cli import main

    on_store(monkeypatch, "s3://no-such-bucket/project")
    assert main(["serve"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: storage.url = 's3://no-such-bucket/project'") and "\n" not in error
