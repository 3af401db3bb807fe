"""A user who gives a bad answer is stopped before anything is written, by a message naming the question."""

from __future__ import annotations

import ast
import zoneinfo

import pytest
import yaml
from conftest import REPO, package_of, recorded_answers, render

CSV = {"data_path": "data/train.csv"}

INVALID = [
    # (question, answers, a part of the message the user sees)
    ("package_name", {"package_name": "Bad-Name"}, r'"Bad-Name" is not a valid Python package name'),
    ("package_name", {"package_name": "class"}, r'"class" .*Python keyword'),
    ("package_name", {"package_name": "1abc"}, r'"1abc" is not a valid Python package name'),
    ("python_version", {"python_version": "3.10"}, r"'3\.10' is not in \['3\.11', '3\.12', '3\.13'\]"),
    ("n_trials", {"n_trials": 0}, r"n_trials must be between 1 and 10000 \(you gave 0\)"),
    ("drift_threshold", {"drift_threshold": 0}, r"greater than 0 and at most 1 .*you gave 0"),
    ("drift_threshold", {"drift_threshold": 1.5}, r"greater than 0 and at most 1 .*you gave 1\.5"),
    ("retrain_cooldown_seconds", {"retrain_cooldown_seconds": 0}, r"between 10 and 604800 .*you gave 0"),
    ("train_schedule", {"train_schedule": "every day"}, r'"every day" is not a cron .*2 fields where 5'),
    ("monitor_schedule", {"monitor_schedule": "* * *"}, r'"\* \* \*" is not a cron .*e "0 \* \* \* \*"'),
    ("train_schedule", {"train_schedule": "61 3 * * 1"}, r"minute 61 is outside 0-59\); for example"),
    ("train_schedule", {"train_schedule": "0 3 * * 8"}, r"day of week 8 is outside 0-7"),
    ("monitor_schedule", {"monitor_schedule": "*/0 * * * *"}, r'minute step "/0" is not a whole number'),
    ("monitor_schedule", {"monitor_schedule": "0 0 * FOO *"}, r'month "FOO" is not a number 1-12 or a name'),
    ("timezone", {"timezone": "Not a zone!"}, r'"Not a zone!" is not an IANA time zone name'),
    # Shaped like a zone, but no such zone: only a lookup in the IANA names refuses it.
    ("timezone", {"timezone": "Europe/Berln"}, r'"Europe/Berln" is not an IANA time zone.*Europe/Berlin'),
    ("timezone", {"timezone": "Mars/Olympus_Mons"}, r'"Mars/Olympus_Mons" is not an IANA time zone name'),
    ("data_path", {"data_path": "train.xlsx"}, r'"train\.xlsx" must be a path .* ending in \.csv'),
    ("target_column", {**CSV, "target_column": ""}, r"target_column is required .*data/train\.csv"),
    ("work_pool", {"work_pool": "Bad Pool"}, r'"Bad Pool" must use lowercase letters'),
    ("work_pool_type", {"work_pool_type": "ecs"}, r"'ecs' is not in \['process', 'docker', 'kubernetes'\]"),
    ("environments", {"environments": ["dev", "qa", "prod"]}, r"'qa' is not in \['dev', 'staging', 'prod'\]"),
    ("environments", {"environments": ["staging", "prod"]}, r"must include dev and prod .*example \[dev, st"),
    ("environments", {"environments": ["dev"]}, r"must include dev and prod .*you gave dev$"),
    ("flow_image", {"work_pool_type": "docker", "flow_image": "My Image"}, r'"My Image" is not an image'),
    ("gpus", {"work_pool_type": "kubernetes", "gpus": -1}, r"gpus must be between 0 and 16 \(you gave -1\)"),
]


def refusal(question: str, message: str) -> str:
    """Copier's wording: 'Validation error for question ...' or, for choices, 'Invalid choice for ...'."""
    return rf"(Validation error for question|Invalid choice for) '{question}': .*{message}"


@pytest.mark.parametrize(
    ("question", "answers", "message"), INVALID, ids=[f"{q}={a[q]!r}" for q, a, _ in INVALID]
)
def test_invalid_answer_is_refused_with_a_message_naming_the_question(tmp_path, question, answers, message):
    with pytest.raises(ValueError, match=refusal(question, message)):
        render(answers, tmp_path / "project")


def test_edge_answers_that_are_valid_are_accepted(tmp_path):
    answers = {
        "n_trials": 1,
        "drift_threshold": 1,
        "timezone": "America/Argentina/Buenos_Aires",
        "data_path": "data/sales-2024.parquet",
        "target_column": "units sold",
        "train_schedule": "0 */6 * * MON-FRI",
        "monitor_schedule": "15,45 8-18 ? * 1#2",
        "work_pool": "gpu-pool-2",
        "work_pool_type": "kubernetes",
        "flow_image": "registry.example.com:5000/team/churn-flows:v1.2_rc",
        "gpus": 2,
        "environments": ["dev", "staging", "prod"],
    }
    project = render(answers, tmp_path / "project")
    assert {k: recorded_answers(project)[k] for k in answers} == answers


@pytest.mark.parametrize(
    ("answers", "package"),
    [({}, "my_ml_project"), ({"project_name": "42 Things"}, "ml_42_things")],
    ids=["default", "name-starting-with-a-digit"],
)
def test_package_name_is_derived_from_the_project_name(tmp_path, answers, package):
    project = render(answers, tmp_path / "project")
    assert package_of(project) == package
    assert (project / "src" / package / "__init__.py").is_file()


def model_families_in_the_template() -> set[str]:
    """The keys of MODEL_FAMILIES in the template's model.py, read without importing scikit-learn."""
    source = (REPO / "template" / "src" / "{{ package_name }}" / "model.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MODEL_FAMILIES":
            assert isinstance(node.value, ast.Dict)
            return {ast.literal_eval(key) for key in node.value.keys if key is not None}
    raise AssertionError("model.py has no MODEL_FAMILIES table")


def test_the_model_family_question_offers_exactly_the_families_of_model_py():
    """The project's settings accept what model.py's table holds (tests/test_model.py in the project), so
    a choice missing from the table would render a project that refuses its own settings."""
    question = yaml.safe_load((REPO / "copier.yml").read_text())["model_family"]
    assert set(question["choices"].values()) == model_families_in_the_template()
    assert question["default"] in model_families_in_the_template()


def timezones_the_validator_accepts() -> list[str]:
    """The names in hooks/validators/timezones.jinja (`{% set timezones = '...'.split() %}`)."""
    text = (REPO / "hooks" / "validators" / "timezones.jinja").read_text()
    return text.split("{%- set timezones = '", 1)[1].split("'.split()", 1)[0].split()


def test_every_time_zone_the_validator_accepts_is_one_zoneinfo_knows():
    """The list is IANA's as Python's zoneinfo reads it, the names Prefect's schedules accept; a name that
    zoneinfo cannot load would render a prefect.yaml that `prefect deploy` refuses."""
    names = timezones_the_validator_accepts()
    assert len(names) > 500 and {"UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires"} <= set(names)
    for name in names:
        zoneinfo.ZoneInfo(name)
