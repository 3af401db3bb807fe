"""A user who gives a bad answer is stopped before anything is written, by a message naming the question."""

from __future__ import annotations

import ast
import json
import shlex
import tomllib
import zoneinfo

import pytest
import yaml
from conftest import REPO, package_of, recorded_answers, render

CSV = {"data_path": "data/train.csv"}
CSV_PRICE = {**CSV, "target_column": "price"}

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
    # Written unquoted into dvc.yaml and the docs' `dvc add` command: characters that change their meaning.
    ("data_path", {**CSV_PRICE, "data_path": "data/$(touch x).csv"}, r"must be a path of letters, digits"),
    (
        "data_path",
        {**CSV_PRICE, "data_path": "data/a: b.csv"},
        r"'\$', ';', '#', '\*' break the dvc\.yaml and shell",
    ),
    ("data_path", {**CSV_PRICE, "data_path": "data/#1.csv"}, r'"data/#1\.csv" must be a path of letters'),
    ("data_path", {**CSV_PRICE, "data_path": "data/it's.csv"}, r"for example data/train\.csv"),
    ("data_path", {**CSV_PRICE, "data_path": "-data.csv"}, r'"-data\.csv" must be a path of letters'),
    ("data_path", {**CSV_PRICE, "data_path": "@data.csv"}, r'"@data\.csv" .*, starting with a letter, digit'),
    ("data_path", {**CSV_PRICE, "data_path": "data/*.csv"}, r'"data/\*\.csv" must be a path of letters'),
    ("author", {"author": "   "}, r'author must be a name, for example "Data Science Team"'),
    ("promotion_mode", {"promotion_mode": "manual"}, r"'manual' is not in \['approve', 'auto', 'suggest'\]"),
]

# Every free-text answer refuses what no TOML or YAML line can hold: a newline, a tab, any other C0 or C1
# control character, DEL, a Unicode line separator, a lone surrogate (not writable as UTF-8).
UNWRITABLE = [
    ("author", {"author": "Ada\nLovelace"}, "a newline at character 4"),
    ("author", {"author": "Ada\udc80"}, "a control character at character 4"),
    ("description", {"description": "Predicts churn.\r"}, "a carriage return at character 16"),
    ("description", {"description": "x\u2028y"}, "a line separator at character 2"),
    ("target_column", {**CSV, "target_column": "price\nusd"}, "a newline at character 6"),
    ("data_path", {**CSV_PRICE, "data_path": "data/train.csv\n"}, "a newline at character 15"),
    ("project_name", {"project_name": "Churn Model\n"}, "a newline at character 12"),
    ("package_name", {"package_name": "churn\n"}, "a newline at character 6"),
    ("train_schedule", {"train_schedule": "0 3 * * 1\n"}, "a newline at character 10"),
    ("monitor_schedule", {"monitor_schedule": "0\t* * * *"}, "a tab at character 2"),
    ("timezone", {"timezone": "UTC\x7f"}, "a control character at character 4"),
    ("work_pool", {"work_pool": "ml-pool\x9b"}, "a control character at character 8"),
    (
        "flow_image",
        {"work_pool_type": "docker", "flow_image": "flows:1\x00"},
        "a control character at character 8",
    ),
]
INVALID += [
    (question, answers, rf"{question} holds {where}: give it on one line, without tabs or control characters")
    for question, answers, where in UNWRITABLE
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
        "promotion_mode": "suggest",
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
    """The project's settings accept what model.py's table holds (tests/test_contract.py in the project), so
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


# Legal answers with every character that needs care in TOML, YAML, JSON or a shell line: quotes, backslash,
# '#', ':', '{{', non-ASCII. The files they reach must parse and give the answers back exactly as typed.
HOSTILE = {
    "author": 'O\'Brien "OB" \\ Ünal #1: 山田',
    "description": 'Predicts churn: "who leaves" # and why \\ naïvely, 100% 🙂 {{ not jinja }}',
    "data_path": "data/ventes@eu+q1=2024,v2:final%.ü.csv",
    "target_column": "Price (\"EUR\") \\ #1: 'net'",
    "use_dvc": True,
}


@pytest.mark.parametrize("ci_provider", ["github", "gitlab"])
def test_hostile_but_legal_answers_render_files_that_parse_and_hold_them(tmp_path, ci_provider):
    project = render({**HOSTILE, "ci_provider": ci_provider}, tmp_path / "project")
    parsed = {}
    for path in sorted(project.rglob("*")):
        name = path.relative_to(project).as_posix()
        if path.suffix == ".toml":
            parsed[name] = tomllib.loads(path.read_text())
        elif path.suffix in {".yaml", ".yml"}:
            parsed[name] = list(yaml.safe_load_all(path.read_text()))
        elif path.suffix == ".json":
            parsed[name] = json.loads(path.read_text())
    ci_file = {"github": ".github/workflows/ci.yml", "gitlab": ".gitlab-ci.yml"}[ci_provider]
    assert {"pyproject.toml", "settings.toml", "dvc.yaml", "prefect.yaml", ci_file} <= set(parsed)

    pyproject = parsed["pyproject.toml"]["project"]
    assert (pyproject["description"], pyproject["authors"]) == (
        HOSTILE["description"],
        [{"name": HOSTILE["author"]}],
    )
    data = parsed["settings.toml"]["data"]
    assert (data["path"], data["target_column"]) == (HOSTILE["data_path"], HOSTILE["target_column"])
    assert HOSTILE["data_path"] in parsed["dvc.yaml"][0]["stages"]["train"]["deps"]
    assert (project / "README.md").read_text().splitlines()[2] == HOSTILE["description"]
    # The README's command that tracks the data with DVC still names exactly the data file.
    readme = (project / "README.md").read_text()
    dvc_add = next(line for line in readme.splitlines() if line.startswith("uv run dvc add "))
    assert shlex.split(dvc_add, comments=True) == ["uv", "run", "dvc", "add", HOSTILE["data_path"]]
