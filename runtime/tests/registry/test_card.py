"""The model card: built from a model tuned and fitted for real on small mixed data, written beside the model
on a folder store and on an S3-compatible server (moto on 127.0.0.1), the gate's verdicts added to it, and
shown as markdown."""

import json
import math

import pytest
import sklearn
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.registry import card, promotion
from ml_lifecycle._internal.storage import StorageError, open_storage
from ml_lifecycle._internal.tables import data_hash, feature_schema
from ml_lifecycle._internal.training import holdout, tuning
from ml_lifecycle._internal.training.validation import Dataset

from ..conftest import PACKAGE, make_frame

ENV = PACKAGE.upper()
SECTIONS = (
    "## Data",
    "## Search space and chosen parameters",
    "## Metrics",
    "## Feature importance",
    "## Gate verdict",
    "## Versions",
)


class Fitted:
    """A model as the train flow has it when it registers one: a study tuned for two trials, the best
    parameters refitted on the training part and scored on the holdout."""

    def __init__(self, settings, tmp_path) -> None:
        frame = make_frame(settings.data.task_type)
        dataset = Dataset(frame=frame, target="label", source="train.csv")
        self.settings = settings
        self.parts = holdout.split(dataset, settings)
        self.schema = feature_schema(dataset.features)
        self.spec = tuning.TuningSpec(
            study_name="card-test",
            storage=f"sqlite:///{tmp_path / 'studies.db'}",
            family=settings.tuning.model_family,
            task_type=settings.data.task_type,
            seed=0,
            cv_folds=2,
        )
        self.study = tuning.open_study(self.spec)
        objective = tuning.make_objective(self.spec, self.parts.train_x, self.parts.train_y, self.schema)
        tuning.run_trials(self.study, objective, 2, None)
        self.params = holdout.best_params(self.study)
        self.pipeline, self.metrics = holdout.refit_and_score(self.parts, self.schema, self.params, settings)
        self.sources = [
            {"part": "configured data", "source": "train.csv", "rows": 240, "hash": data_hash(frame)}
        ]

    def card(self, tag: str = "my_ml_project:card1", **options) -> card.ModelCard:
        return card.build(
            self.settings,
            tag,
            self.pipeline,
            spec=self.spec,
            study=self.study,
            params=self.params,
            holdout=(self.parts.test_x, self.parts.test_y),
            metrics=self.metrics,
            sources=self.sources,
            **options,
        )


@pytest.fixture
def fitted(csv_settings, tmp_path) -> Fitted:
    return Fitted(csv_settings, tmp_path)


def on_store(monkeypatch, url: str):
    monkeypatch.setenv(f"{ENV}_STORAGE__URL", url)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(params=["folder", "s3"])
def store_settings(request, csv_settings, monkeypatch, tmp_path):
    """The suite's settings on a store of their own: a folder, or a bucket on the S3 server."""
    if request.param == "folder":
        return on_store(monkeypatch, str(tmp_path / "store"))
    server = request.getfixturevalue("s3_environ")
    return on_store(monkeypatch, f"s3://{server.bucket()}/team/project")


def test_a_card_holds_what_the_model_learned_from_how_it_was_chosen_and_how_it_scores(fitted):
    built = fitted.card()
    assert built.tag == "my_ml_project:card1"
    assert (built.task_type, built.model_family) == (fitted.spec.task_type, fitted.spec.family)
    assert built.primary_metric == fitted.spec.metric
    assert built.data_sources == fitted.sources
    assert built.parameters == fitted.params
    # The space each chosen parameter was drawn from, as Optuna describes it.
    assert set(fitted.params) <= set(built.search_space)
    assert all(entry["name"].endswith("Distribution") for entry in built.search_space.values())
    assert built.trials == 2 and built.study_name == "card-test" and built.cv_folds == 2
    assert built.best_cv_score == pytest.approx(fitted.study.best_value)
    assert built.holdout_metrics == fitted.metrics
    assert built.holdout_rows == len(fitted.parts.test_x)
    assert built.versions["scikit-learn"] == sklearn.__version__
    assert set(built.versions) == {"python", *card.LIBRARIES}
    assert built.verdicts == []


def test_feature_importance_is_by_raw_input_column_and_finds_the_signal(fitted):
    """The label depends on `size` (and on `color`), not on `weight`: shuffling `size` costs the most, and the
    columns are the ones a request sends, not the one-hot encoder's."""
    built = fitted.card()
    assert sorted(i.column for i in built.importance) == ["color", "size", "weight"]
    assert built.importance[0].column == "size"
    assert built.importance[0].drop > 0.05
    assert f"{len(fitted.parts.test_x)} holdout rows" in built.importance_note


def test_the_recent_slice_is_scored_when_the_run_had_one(fitted):
    recent = make_frame(fitted.spec.task_type, rows=50, seed=5)
    built = fitted.card(recent=(recent.drop(columns=["label"]), recent["label"]))
    assert built.recent_rows == 50
    assert set(built.recent_metrics) == set(fitted.metrics)
    without = fitted.card()
    assert (without.recent_rows, without.recent_metrics) == (0, {})
    assert "no labelled production rows" in without.recent_note


def test_groups_are_scored_as_the_gate_scores_them_where_the_fairness_column_is_set(fitted, monkeypatch):
    monkeypatch.setenv(f"{ENV}_REGISTRY__SENSITIVE_COLUMN", "color")
    get_settings.cache_clear()
    fitted.settings = get_settings()
    built = fitted.card()
    assert built.fairness_column == "color"
    expected = promotion.group_scores(
        fitted.pipeline, fitted.parts.test_x, fitted.parts.test_y, "color", fitted.spec.task_type
    )
    assert built.groups == expected
    assert {g["group"] for g in built.groups} >= {"red", "green", "blue"}
    page = card.markdown(built)
    assert "## Per group of `color` (holdout)" in page
    assert "| red |" in page


def test_a_card_without_a_fairness_column_has_no_group_section(fitted):
    built = fitted.card()
    assert built.fairness_column == "" and built.groups == []
    assert "Per group" not in card.markdown(built)


def test_the_markdown_page_has_each_section(fitted):
    page = card.markdown(fitted.card())
    for section in SECTIONS:
        assert f"\n{section}\n" in page, section
    assert page.startswith("# Model card: `my_ml_project:card1`")
    assert "| size |" in page
    assert "Not judged yet" in page
    for name in fitted.params:
        assert f"| {name} |" in page


def test_the_page_lists_the_most_important_columns_and_counts_the_rest(fitted, monkeypatch):
    monkeypatch.setattr(card, "IMPORTANCE_SHOWN", 2)
    built = fitted.card()
    page = card.markdown(built)
    assert f"| {built.importance[1].column} |" in page
    assert f"| {built.importance[2].column} |" not in page
    assert "1 more column(s) in the card's JSON." in page


def test_a_card_is_written_once_beside_its_model_and_read_back(fitted, store_settings):
    built = fitted.card(tag="my_ml_project:roundtrip")
    assert card.save(store_settings, built)
    storage = open_storage(store_settings)
    assert storage.read(card.key(built.tag)) is not None
    assert card.key(built.tag) == "models/my_ml_project/roundtrip.card.json"
    assert card.load(store_settings, built.tag) == built
    # Create-only: a second card for the same model changes nothing.
    other = built.model_copy(update={"parameters": {"changed": True}})
    assert not card.save(store_settings, other)
    assert card.load(store_settings, built.tag) == built
    assert card.load(store_settings, "my_ml_project:never-carded") is None


def test_the_gates_verdicts_are_added_to_the_card(fitted, store_settings):
    built = fitted.card(tag="my_ml_project:judged")
    card.save(store_settings, built)
    refused = {"candidate": built.tag, "production": "my_ml_project:old", "passed": False, "reason": "no"}
    # A refusal before scoring has no score (NaN): the card stays strict JSON, the value null.
    assert card.record_verdict(store_settings, built.tag, refused | {"candidate_score": math.nan})
    promoted = {
        "candidate": built.tag,
        "production": "my_ml_project:old",
        "passed": True,
        "reason": "beats it",
    }
    assert card.record_verdict(store_settings, built.tag, promoted)
    loaded = card.load(store_settings, built.tag)
    assert loaded is not None
    assert [v["passed"] for v in loaded.verdicts] == [False, True]
    assert loaded.verdicts[0]["candidate_score"] is None and "at" in loaded.verdicts[0]
    assert loaded.model_copy(update={"verdicts": []}) == built  # nothing else changed
    raw = open_storage(store_settings).read_bytes(card.key(built.tag))
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"{name} in the card's JSON"))
    page = card.markdown(loaded)
    assert "**promoted** at" in page and "`my_ml_project:old`: beats it." in page
    assert "2 verdicts in all" in page


def test_a_verdict_for_a_model_without_a_card_writes_nothing(csv_settings):
    assert not card.record_verdict(csv_settings, "my_ml_project:before-cards", {"passed": True})
    assert open_storage(csv_settings).read(card.key("my_ml_project:before-cards")) is None


def test_an_object_that_is_no_card_is_refused_naming_its_key(csv_settings):
    tag = "my_ml_project:garbled"
    open_storage(csv_settings).write(card.key(tag), b'{"tag": 3}')
    with pytest.raises(StorageError, match=r"models/my_ml_project/garbled\.card\.json is not a model card"):
        card.load(csv_settings, tag)
    open_storage(csv_settings).delete(card.key(tag))
