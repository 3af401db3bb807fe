"""A team makes a new project its own, touching only the places the README points to.

On a project rendered with default answers, the team (a) loads its data from two files joined on a key,
(b) turns on the worked example of a derived feature for its own columns, (c) adds a model family by one
entry in the table and selects it. Then the whole product works on it (train, serve, monitor, predict, the
ONNX export's stated fallback), its lint, type check and tests pass, and git shows that nothing outside
dataset.py, features.py, model.py and settings.toml had to change.
"""

from __future__ import annotations

import csv
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, Project, copy_project, explain, serving, with_library

pytestmark = pytest.mark.slow

USER_FILES = {"src/{pkg}/dataset.py", "src/{pkg}/features.py", "src/{pkg}/model.py", "settings.toml"}

# (a) Two files joined on a key; the key identifies rows, it is no feature.
DATASET = """\
    customers = read_table(settings.resolve("data/customers.csv"))
    usage = read_table(settings.resolve("data/usage.csv"))
    joined = customers.merge(usage, on="customer_id", validate="one_to_one")
    return joined.drop(columns=["customer_id"])
"""
# (b) The worked example, on the team's own columns.
FEATURES = """\
        ("minutes_per_call", Ratio("minutes", "calls")),
"""
# (c) A family the template does not ship: one entry (and its import).
MODEL_IMPORT = "from sklearn.ensemble import (\n    ExtraTreesClassifier,\n    ExtraTreesRegressor,\n"
MODEL_ENTRY = """\
    "extra_trees": ModelFamily(
        search_space=lambda trial: {
            "n_estimators": trial.suggest_int("n_estimators", 20, 120, log=True),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 10),
        },
        classifier=lambda params, seed: ExtraTreesClassifier(random_state=seed, n_jobs=1, **params),
        regressor=lambda params, seed: ExtraTreesRegressor(random_state=seed, n_jobs=1, **params),
    ),
"""
SETTINGS = {"path": "data/usage.csv", "target_column": "churned", "model_family": "extra_trees"}
RAW_COLUMNS = {"age_years", "plan", "region", "minutes", "calls"}

# The model's recorded feature schema (its request fields), read in the project's environment.
REQUEST_FIELDS = with_library("""
import json, sys
settings = internal("config").get_settings()
import bentoml
aliases = internal("registry.aliases")
model = bentoml.models.get(aliases.production_tag(settings))
print(json.dumps({"fields": sorted(model.info.metadata["feature_schema"]), "tag": str(model.tag)}))
""")


def write_the_teams_data(root: Path, rows: int = 400, seed: int = 3) -> list[dict]:
    """customers.csv and usage.csv joined on customer_id, as exported from two systems: a spreadsheet
    column name, text labels, gaps. Returns the joined rows without the label, as requests carry them."""
    rng = random.Random(seed)
    data = root / "data"
    data.mkdir(exist_ok=True)
    joined = []
    with (data / "customers.csv").open("w", newline="") as c, (data / "usage.csv").open("w", newline="") as u:
        customers, usage = csv.writer(c), csv.writer(u)
        customers.writerow(["customer_id", "Age (years)", "plan", "region"])
        usage.writerow(["customer_id", "minutes", "calls", "churned"])
        for key in rng.sample(range(10_000, 99_999), rows):
            age, plan = rng.randint(18, 80), rng.choice(["basic", "plus", "pro"])
            region = "" if rng.random() < 0.1 else rng.choice(["north", "south", "east"])
            calls = rng.randint(1, 60)
            minutes = round(calls * rng.uniform(0.5, 12), 1)
            churn = minutes / calls < 3 or (plan == "basic" and rng.random() < 0.4)
            customers.writerow([key, age, plan, region])
            usage.writerow([key, minutes, calls, "yes" if churn else "no"])
            joined.append(
                {"age_years": age, "plan": plan, "region": region or None, "minutes": minutes, "calls": calls}
            )
    return joined


def fenced(text: str, place: str, body: str, *, keep: bool) -> str:
    """Put `body` into the fenced place named `place` (replacing what is there, or after it with keep)."""
    pattern = re.compile(
        rf"(# ---- YOUR CODE STARTS HERE: {re.escape(place)} ----\n)(.*?)"
        r"(\s*# ---- YOUR CODE ENDS HERE ----)",
        re.S,
    )
    found = pattern.search(text)
    assert found, f"no fenced place {place!r}"
    inside = found.group(2) + "\n" + body.rstrip("\n") if keep else body.rstrip("\n")
    return text[: found.start(2)] + inside + text[found.end(2) :]


def edit(path: Path, change) -> None:
    path.write_text(change(path.read_text()))


def fill_the_fences(package: Path, dataset: str, features: str) -> None:
    """A team's code in the three fenced files: its loader, its feature steps, one more model family."""
    edit(package / "dataset.py", lambda t: fenced(t, "load your training data", dataset, keep=False))
    edit(package / "features.py", lambda t: fenced(t, "feature steps", features, keep=True))
    edit(
        package / "model.py",
        lambda t: fenced(
            t.replace("from sklearn.ensemble import (\n", MODEL_IMPORT, 1),
            "model families (name -> estimator and search space)",
            MODEL_ENTRY,
            keep=True,
        ),
    )


def make_it_ours(project: Project) -> None:
    fill_the_fences(project.root / "src" / project.package, DATASET, FEATURES)

    def settings(text: str) -> str:
        for key, value in SETTINGS.items():
            text, count = re.subn(rf'^{key} = ".*"$', f'{key} = "{value}"', text, count=1, flags=re.M)
            assert count == 1, key
        return text

    edit(project.root / "settings.toml", settings)


def git(project: Project, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=project.root, capture_output=True, text=True, check=True)
    return result.stdout


@pytest.fixture(scope="module")
def adopted(default_installed, tmp_path_factory, prefect_home) -> Iterator[tuple[Project, list[dict]]]:
    project = copy_project(default_installed, tmp_path_factory.mktemp("adoption"), prefect_home)
    if not (project.root / ".git").exists():  # the copy task commits only where git knows the user
        git(project, "init", "-q")
    git(project, "add", "-A")
    git(
        project,
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@localhost",
        "commit",
        "-qm",
        "rendered",
        "--allow-empty",
    )
    rows = write_the_teams_data(project.root)
    make_it_ours(project)
    trained = project.cli("train", "--n-trials", "4")
    assert trained.returncode == 0, explain(trained)
    yield project, rows


def test_nothing_outside_the_users_files_changed(adopted):
    project, _ = adopted
    changed = {line.split("\t")[2]: line for line in git(project, "diff", "--numstat").splitlines()}
    expected = {name.format(pkg=project.package) for name in USER_FILES}
    assert set(changed) == expected, f"changed outside the user's files: {set(changed) - expected}"
    assert git(project, "status", "--porcelain", "--untracked-files=all") == "".join(
        f" M {name}\n" for name in sorted(expected)
    ), "the lifecycle left files that are neither ignored nor the user's"
    output = REPO / "tests" / "output"
    output.mkdir(exist_ok=True)
    (output / "adoption.diff").write_text(git(project, "diff"))


def test_the_request_schema_holds_raw_columns_only(adopted):
    project, _ = adopted
    assert set(project.query(REQUEST_FIELDS)["fields"]) == RAW_COLUMNS


def test_the_service_answers_raw_rows_and_refuses_the_derived_column(adopted, tmp_path):
    project, rows = adopted
    log = tmp_path / "serve.log"
    with serving(project, log) as base:
        answered = httpx.post(f"{base}/predict", json={"rows": rows[:5]}, timeout=60)
        assert answered.status_code == 200, answered.text
        assert set(answered.json()["predictions"]) <= {"yes", "no"}
        derived = httpx.post(
            f"{base}/predict", json={"rows": [{**rows[0], "minutes_per_call": 2.0}]}, timeout=60
        )
        assert derived.status_code == 400 and "minutes_per_call" in derived.text
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert f"{project.package}_model_info{{" in metrics and 'runtime="sklearn"' in metrics
    assert "ONNX conversion is not usable" in log.read_text(), "the fallback must say why in the log"


def test_monitor_and_batch_prediction_take_the_raw_columns(adopted):
    project, rows = adopted
    current = project.root / "data" / "current.csv"
    with current.open("w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=sorted(RAW_COLUMNS))
        writer.writeheader()
        writer.writerows(rows[:200])
    monitored = project.cli("monitor", "--current", "data/current.csv")
    assert monitored.returncode == 0, explain(monitored)
    assert "rows=200" in monitored.stdout
    predicted = project.cli("predict", "--input", "data/current.csv", "--output", "data/scored.csv")
    assert predicted.returncode == 0, explain(predicted)
    assert len((project.root / "data" / "scored.csv").read_text().splitlines()) == 201


def test_the_onnx_export_states_its_fallback(adopted):
    project, _ = adopted
    exported = project.cli("export-onnx")
    assert exported.returncode == 1, explain(exported)
    assert "cannot export to ONNX" in exported.stderr and "Ratio" in exported.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("uv", "run", "ruff", "check", "."),
        ("uv", "run", "ruff", "format", "--check", "."),
        ("uv", "run", "mypy"),
        ("uv", "run", "pytest", "-q", "-p", "no:cacheprovider"),
    ],
    ids=["ruff", "ruff-format", "mypy", "pytest"],
)
def test_the_projects_own_checks_pass(adopted, command):
    project, _ = adopted
    result = project.run(*command)
    assert result.returncode == 0, explain(result)
