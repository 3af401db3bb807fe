"""The answer matrix: every valid combination of copier.yml's choices rendered and checked, and a pairwise
covering set of them installed and running their own tests (tests/answer_matrix.py builds both).

Rendered: 1944 combinations today (python_version 3 x task_type 2 x model_family 3 x promotion_mode 3 x
work_pool_type 3 x environments 2 valid of 8 subsets x ci_provider 3 x use_dvc 2), each checked for exactly
its tree and no leftover Jinja. Copier renders them from one snapshot of the working tree (no clone per
project) in two processes. Ruff and mypy read only the Python files and their own pyproject sections, so they
run once per distinct such content (the Python files vary only with the package name, so today once per
Python version).

Installed: ci_provider, promotion_mode, work_pool_type and environments change no Python module and no
installed dependency (only YAML, a line of settings.toml, the CI file, the Dockerfile and the optional worker
group that `uv sync` leaves out), and the
render matrix checks what they change for every combination. So the installed rows cover every pair of the
other factors (python_version, task_type, model_family, use_dvc): 9 rows, the least for 3 Pythons x 3
model families, starting from the two answer sets test_project.py installs and runs in full (one session
cache, conftest.installed). Each of the other 7 costs an install (about 40 s: locking, linking and
compiling 30,000 files) plus the project's own suite (its user's code and the contract test, SUITE_PART). The
library's suite runs once, in the generator's environment (runtime/tests).

Tiers: `uv run pytest` (CI) renders only the pairwise rows over all factors (about a dozen), in seconds, as
fast tests. MATRIX=full renders every combination (slow), and the installed rows and mypy over the matrix are
marked `release`: the scheduled release workflow runs them all (`MATRIX=full uv run pytest -m ""`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from answer_matrix import (
    Answers,
    Matrix,
    Rendered,
    copier_jinja,
    fast_renders,
    frozen,
    label,
    load_questions,
    pairs,
    pairwise,
    project_onto,
    questions_of,
    render_files,
    snapshot,
)
from conftest import ANSWER_SETS, Project, explain, render, run
from test_project import INSTALLED_SETS
from test_render import expected_tree, leftover_jinja, ruff

SAMPLE = os.environ.get("MATRIX") != "full"
# Factors that change no Python module and no installed dependency (see the docstring).
RENDER_ONLY = {"ci_provider", "promotion_mode", "work_pool_type", "environments"}
# Where task_type, model_family and use_dvc act in a project's own suite (the answered task type and family
# through its settings; the data version in training), in the suite's own order: a run that puts training
# before serving fails (Prefect's console handler keeps the stream of a test that captured output).
# The project's own suite is its user's code and the contract test: the answers act on all of it.
SUITE_PART = ["tests"]
# The size of today's matrix; a question with choices added to copier.yml changes it (and this line).
EXPECTED_COMBINATIONS = 1944


@dataclass(frozen=True)
class Plan:
    """What the matrix renders and installs, worked out from copier.yml once, at collection."""

    factors: dict[str, list[object]]
    combinations: list[Answers]
    defaults: Answers
    installed_factors: list[str]
    installed_rows: list[Answers]


def plan() -> Plan:
    with tempfile.TemporaryDirectory() as scratch:
        matrix = Matrix(load_questions(), copier_jinja(snapshot(Path(scratch))))
        combinations = matrix.combinations()
        defaults = matrix.defaults()
    names = [name for name in matrix.factors if name not in RENDER_ONLY]
    seeds = project_onto(({**defaults, **ANSWER_SETS[name]} for name in INSTALLED_SETS), names)
    installed = pairwise(project_onto(combinations, names), names, start=seeds)
    return Plan(matrix.factors, combinations, defaults, names, installed)


PLAN = plan()


@functools.cache
def sample() -> list[Answers]:
    """The pairwise rows over every factor: what CI renders (a second to work out)."""
    return pairwise(PLAN.combinations, list(PLAN.factors))


RENDERED = sample() if SAMPLE else PLAN.combinations
# The rows no other module installs: each is installed here and runs SUITE_PART.
EXTRA_ROWS = PLAN.installed_rows[len(INSTALLED_SETS) :]


def slow_unless_sampled(test):
    """Every combination takes minutes to render, so those tests are slow; the sample takes seconds."""
    return test if SAMPLE else pytest.mark.slow(test)


# ------------------------------------------------------------------ the matrix itself, from copier.yml


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A copy of the working tree without .git: Copier's Jinja environment and the renders read it."""
    return snapshot(tmp_path_factory.mktemp("template"))


def combinations_of(config: dict, template: Path) -> list[Answers]:
    return Matrix(questions_of(config), copier_jinja(template)).combinations()


@pytest.fixture(scope="module")
def config() -> dict:
    """copier.yml's questions as parsed (a fresh copy for each test to change)."""
    return load_questions()


def test_the_matrix_is_every_valid_combination_of_the_questions_with_choices():
    print(f"answer matrix: {len(PLAN.combinations)} valid combinations of {list(PLAN.factors)}")
    assert len(PLAN.combinations) == EXPECTED_COMBINATIONS
    assert len({frozen(answers) for answers in PLAN.combinations}) == len(PLAN.combinations)
    assert all(set(answers) == set(PLAN.factors) for answers in PLAN.combinations)


def test_environments_without_dev_or_prod_are_refused_by_their_validator():
    chosen = {tuple(answers["environments"]) for answers in PLAN.combinations}
    assert chosen == {("dev", "prod"), ("dev", "staging", "prod")}


def test_a_new_question_with_choices_joins_the_matrix_by_itself(config, template):
    changed = {**config, "accelerator": {"type": "str", "choices": {"CPU": "cpu", "GPU": "gpu"}}}
    found = combinations_of(changed, template)
    assert len(found) == 2 * EXPECTED_COMBINATIONS
    assert {answers["accelerator"] for answers in found} == {"cpu", "gpu"}


def test_a_question_hidden_by_when_gets_no_value(config, template):
    when = "{{ work_pool_type == 'kubernetes' }}"
    changed = {**config, "node_pool": {"type": "str", "choices": ["small", "large"], "when": when}}
    found = combinations_of(changed, template)
    kubernetes = [answers for answers in found if answers["work_pool_type"] == "kubernetes"]
    assert len(found) == EXPECTED_COMBINATIONS + len(kubernetes) // 2
    assert all(("node_pool" in answers) == (answers in kubernetes) for answers in found)


def test_a_validator_drops_exactly_the_combinations_it_refuses(config, template):
    refuse = "{% if use_dvc and python_version == '3.13' %}DVC is not offered on 3.13{% endif %}"
    changed = {**config, "use_dvc": {**config["use_dvc"], "validator": refuse}}
    found = combinations_of(changed, template)
    assert len(found) == EXPECTED_COMBINATIONS - EXPECTED_COMBINATIONS // 6
    assert not [answers for answers in found if answers["use_dvc"] and answers["python_version"] == "3.13"]


@pytest.mark.parametrize("kind", ["sample", "installed"])
def test_the_pairwise_rows_hold_every_pair_of_values(kind):
    """The sample pairs every factor; the installed rows pair the factors that change installed code."""
    if kind == "sample":
        rows, names = sample(), list(PLAN.factors)
    else:
        rows, names = PLAN.installed_rows, PLAN.installed_factors
    wanted = set().union(*(pairs(answers, names) for answers in PLAN.combinations))
    covered = set().union(*(pairs(answers, names) for answers in rows))
    assert wanted - covered == set()
    answerable = project_onto(PLAN.combinations, names)
    assert [answers for answers in rows if answers not in answerable] == []
    assert len(rows) <= 13  # five factors of three values need 9 at least; the greedy cover takes 13


def test_the_installed_rows_start_from_the_sets_test_project_installs():
    for name, row in zip(INSTALLED_SETS, PLAN.installed_rows, strict=False):
        assert row == {f: ANSWER_SETS[name].get(f, PLAN.defaults[f]) for f in PLAN.installed_factors}
    assert len(PLAN.installed_rows) == 9, "3 Pythons x 3 model families need 9; more means a worse cover"


# ------------------------------------------------------------------ every combination rendered


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class MatrixRun:
    """What rendering every combination found: wrong trees and leftover Jinja by combination, and one project
    kept for each distinct content that ruff or mypy reads (the others are deleted as they come)."""

    wrong_trees: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    checked_files: set[tuple[str, str]] = field(default_factory=set)
    contents: set[str] = field(default_factory=set)
    python_contents: set[str] = field(default_factory=set)
    for_ruff: dict[str, Path] = field(default_factory=dict)
    for_mypy: dict[str, Rendered] = field(default_factory=dict)

    def add(self, rendered: Rendered) -> None:
        name = label(rendered.answers)
        tree, expected = set(rendered.files), expected_tree(rendered.recorded)
        if tree != expected:
            self.wrong_trees[name] = {
                "missing": sorted(expected - tree),
                "unexpected": sorted(tree - expected),
            }
        for path, sha in rendered.files.items():
            if (path, sha) not in self.checked_files:
                self.checked_files.add((path, sha))
                if found := leftover_jinja(path, (rendered.root / path).read_text()):
                    self.leftovers[f"{name}: {path}"] = found
        self.contents.add(digest({k: v for k, v in rendered.files.items() if k != ".copier-answers.yml"}))
        python = {path: sha for path, sha in rendered.files.items() if path.endswith(".py")}
        self.python_contents.add(digest(python))
        pyproject = tomllib.loads((rendered.root / "pyproject.toml").read_text())
        kept = [
            self.for_ruff.setdefault(digest(python, pyproject["tool"]["ruff"]), rendered.root),
            self.for_mypy.setdefault(
                digest(python, pyproject["tool"]["mypy"], pyproject["project"]["dependencies"]), rendered
            ).root,
        ]
        if rendered.root not in kept:
            shutil.rmtree(rendered.root)

    def summary(self, count: int, seconds: float) -> str:
        return (
            f"answer matrix: {count} combinations rendered in {seconds:.0f} s; distinct contents "
            f"{len(self.contents)} (the answers file aside), Python files {len(self.python_contents)}, "
            f"ruff runs {len(self.for_ruff)}, mypy runs {len(self.for_mypy)}"
        )


def render_pool(workers: int) -> ProcessPoolExecutor:
    """Render processes: fresh interpreters (forking pytest's threads is unsafe), set up by fast_renders."""
    spawn = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=spawn, initializer=fast_renders)


# Lines a render from the snapshot may write differently from one of the git repository: which commit.
# The pin of the library names the source too: its path and commit (hooks/render/pin.jinja), and so does
# the flow image's build of a local template (its build context and where the Dockerfile copies it).
SOURCE_LINES = re.compile(
    r"^((_commit|_src_path|template_version)\b|\s*\"ml-lifecycle @ "
    r"|.*--build-context template=|COPY --from=template ).*\n",
    re.MULTILINE,
)


def contents(root: Path) -> dict[str, str]:
    """Every file's text under `root`, without the lines that name the template's source."""
    return {
        path.relative_to(root).as_posix(): SOURCE_LINES.sub("", path.read_text())
        for path in root.rglob("*")
        if path.is_file()
    }


def test_a_fast_render_writes_what_render_writes(template, tmp_path):
    """What the matrix renders (a snapshot, no git, compiled sources kept between projects) equals a plain
    `copier copy` of the repository; three rows one after another in one process, so two reuse compiles."""
    rows = sample()[:3]
    with render_pool(1) as pool:
        fast = [pool.submit(render_files, template, row, tmp_path / f"fast{i}") for i, row in enumerate(rows)]
        roots = [job.result().root for job in fast]
    for i, (row, root) in enumerate(zip(rows, roots, strict=True)):
        assert contents(root) == contents(render(row, tmp_path / f"plain{i}")), label(row)


@pytest.fixture(scope="module")
def rendered_matrix(template, tmp_path_factory) -> MatrixRun:
    """Every combination (or the sample) rendered in two processes and checked as it arrives."""
    root = tmp_path_factory.mktemp("matrix")
    run = MatrixRun()
    started = time.monotonic()
    with render_pool(2) as pool:
        jobs = [pool.submit(render_files, template, row, root / f"{i:03}") for i, row in enumerate(RENDERED)]
        for job in jobs:
            run.add(job.result())
    print(run.summary(len(RENDERED), time.monotonic() - started))
    return run


@slow_unless_sampled
def test_every_combination_writes_exactly_its_files(rendered_matrix):
    wrong = rendered_matrix.wrong_trees
    differences = Counter(json.dumps(difference) for difference in wrong.values())
    assert wrong == {}, f"{len(wrong)} combinations; most common differences: {differences.most_common(3)}"


@slow_unless_sampled
def test_no_combination_leaves_jinja_behind(rendered_matrix):
    assert rendered_matrix.leftovers == {}


@slow_unless_sampled
@pytest.mark.parametrize("command", [("check",), ("format", "--check")], ids=["check", "format"])
def test_ruff_is_clean_on_every_distinct_python_content(rendered_matrix, command):
    results = {root.name: ruff(root, *command) for root in rendered_matrix.for_ruff.values()}
    assert {name: r.stdout + r.stderr for name, r in results.items() if r.returncode} == {}


# ------------------------------------------------------------------ installed projects


def installed_answers(python_version: str) -> Answers:
    """The first installed row on `python_version`, as the answers it is installed with."""
    for index, row in enumerate(PLAN.installed_rows):
        if row["python_version"] == python_version:
            return ANSWER_SETS[INSTALLED_SETS[index]] if index < len(INSTALLED_SETS) else row
    raise LookupError(f"no installed row runs Python {python_version}")


def mypy(project: Project, root: Path) -> subprocess.CompletedProcess:
    """The installed project's own mypy (its locked version, its dependencies' types) on `root`'s files,
    with `root`'s configuration."""
    return run(
        [str(project.root / ".venv" / "bin" / "python"), "-m", "mypy"], cwd=root, env=project.env, timeout=900
    )


@pytest.mark.release
def test_mypy_passes_on_every_distinct_python_content(rendered_matrix, installed):
    failed = {}
    for rendered in rendered_matrix.for_mypy.values():
        project = installed(installed_answers(str(rendered.recorded["python_version"])))
        result = mypy(project, rendered.root)
        if result.returncode:
            failed[label(rendered.answers)] = explain(result)
    assert failed == {}


@pytest.mark.release
@pytest.mark.parametrize("row", EXTRA_ROWS, ids=label)
def test_a_pairwise_row_installs_and_passes_its_tests_where_its_answers_act(row, installed, tmp_path):
    project = installed(row)
    command = ["uv", "run", "pytest", "-x", "-q", "-p", "no:cacheprovider", *SUITE_PART]
    result = project.run(*command, TMPDIR=str(tmp_path))
    assert result.returncode == 0, explain(result)
