"""The answer matrix, read from copier.yml: every valid combination of the questions that offer choices.

A question joins the matrix when it has `choices` (a multiselect one with every subset of them) or is a bool
(both values); every other question keeps its default. A combination is dropped when a question's own
validator, rendered by Copier's Jinja environment for this template, returns a message (environments without
dev or prod, today), and a question whose `when` is false gets no value, as Copier would not ask it.

`pairwise` picks a small set of rows in which every pair of values of any two factors appears. It is a short
greedy cover written here rather than allpairspy: PyPI's newest allpairspy (2.5.1) lists Python only up to
3.11, and the matrix needs rows that start from the answer sets other tests already install and that are only
ever valid combinations (allpairspy checks pairs with a filter callback, not whole rows against validators).

`python tests/answer_matrix.py` prints the matrix size and the pairwise rows.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import copier
import plumbum
import yaml
from copier._main import Worker
from jinja2 import Environment, Template, meta

REPO = Path(__file__).resolve().parents[1]
COPIER_YML = REPO / "copier.yml"

Answers = dict[str, object]
Pair = tuple[tuple[str, object], tuple[str, object]]

# What Copier reads as false when a `when` renders to text (copier's cast_to_bool).
FALSE_TEXT = {"", "false", "no", "off", "0", "n", "none", "null", "~"}


def load_questions(path: Path = COPIER_YML) -> dict[str, dict]:
    """The questions of a copier.yml in the order Copier asks them (keys starting with '_' are settings)."""
    config = yaml.safe_load(path.read_text())
    return questions_of(config)


def questions_of(config: Mapping[str, object]) -> dict[str, dict]:
    """Questions from a parsed copier.yml; the short form `name: default` becomes {"default": value}."""
    return {
        name: dict(spec) if isinstance(spec, dict) else {"default": spec}
        for name, spec in config.items()
        if not name.startswith("_")
    }


def choice_values(spec: Mapping[str, object]) -> list[object]:
    """The values a question can take in the matrix: its choices (label -> value, or a list), every subset for
    a multiselect, both values for a bool; empty for a free-form question."""
    choices = spec.get("choices")
    if choices is None:
        return [False, True] if spec.get("type") == "bool" else []
    if isinstance(choices, dict):
        values = list(choices.values())
    else:
        values = [c[1] if isinstance(c, list | tuple) else c for c in choices]
    if spec.get("multiselect"):
        return [
            list(subset) for size in range(len(values) + 1) for subset in itertools.combinations(values, size)
        ]
    return values


def factors(questions: Mapping[str, Mapping[str, object]]) -> dict[str, list[object]]:
    """Every question of the matrix with the values it takes, in copier.yml's order."""
    return {name: values for name, spec in questions.items() if (values := choice_values(spec))}


def copier_jinja(template_dir: Path) -> Environment:
    """Copier's own Jinja environment for the template in `template_dir` (its filters, StrictUndefined and the
    loader that finds hooks/validators/), so validators render here exactly as at `copier copy`. Worker is
    Copier's internal class: if it moves, this import fails loudly rather than the matrix drifting."""
    return Worker(src_path=str(template_dir)).jinja_env


class Matrix:
    """Copier's view of a combination: defaults rendered in order, `when` and validators evaluated."""

    def __init__(self, questions: Mapping[str, Mapping[str, object]], env: Environment) -> None:
        self.questions = questions
        self.env = env
        self.factors = factors(questions)
        self.rendered: dict[tuple, str] = {}

    @functools.cache  # noqa: B019 - a few Matrix objects per session; each source compiles once
    def template(self, source: str) -> tuple[Template, tuple[str, ...]]:
        """The compiled template and the answers it reads."""
        return self.env.from_string(source), tuple(meta.find_undeclared_variables(self.env.parse(source)))

    def render(self, value: object, context: Mapping[str, object]) -> object:
        """A question's setting as Copier uses it: text is a Jinja template, anything else is taken as is.
        Rendered once for the same values of the answers it reads (most read none of the matrix's)."""
        if not isinstance(value, str):
            return value
        template, reads = self.template(value)
        key = (value, frozen({name: context[name] for name in reads if name in context}))
        if key not in self.rendered:
            self.rendered[key] = template.render(**context)
        return self.rendered[key]

    def default(self, spec: Mapping[str, object], context: Mapping[str, object]) -> object:
        value = self.render(spec.get("default"), context)
        kind = spec.get("type")
        if isinstance(value, str) and kind in {"int", "float"}:
            return int(value) if kind == "int" else float(value)
        return value

    def asked(self, spec: Mapping[str, object], context: Mapping[str, object]) -> bool:
        when = self.render(spec.get("when", True), context)
        return str(when).strip().lower() not in FALSE_TEXT if isinstance(when, str) else bool(when)

    def answers(self, combination: Mapping[str, object]) -> Answers | None:
        """The answers a user gives for `combination`, or None when a validator refuses one. As in Copier,
        a question that is not asked (`when` false) takes its default and is given no value, and a validator
        sees the answers before its question."""
        context: dict[str, object] = {}
        given: Answers = {}
        for name, spec in self.questions.items():
            if name in combination and self.asked(spec, context):
                given[name] = context[name] = combination[name]
                if str(self.render(spec.get("validator", ""), context)).strip():
                    return None
            elif "default" in spec:
                context[name] = self.default(spec, context)
        return given

    def defaults(self) -> Answers:
        """The matrix's questions at their defaults: what an answer set that leaves them alone chose."""
        context: dict[str, object] = {}
        for name, spec in self.questions.items():
            if "default" in spec:
                context[name] = self.default(spec, context)
        return {name: context[name] for name in self.factors if name in context}

    def combinations(self) -> list[Answers]:
        """Every valid combination, once (two that differ only in a question Copier would not ask are one)."""
        names = list(self.factors)
        found: dict[tuple, Answers] = {}
        for values in itertools.product(*self.factors.values()):
            answers = self.answers(dict(zip(names, values, strict=True)))
            if answers is not None:
                found.setdefault(frozen(answers), answers)
        return list(found.values())


def frozen(answers: Mapping[str, object]) -> tuple:
    """A hashable form of answers (multiselect lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in answers.items()))


def pairs(row: Mapping[str, object], names: Sequence[str]) -> set[Pair]:
    """Every pair of (factor, value) in a row, over the factors `names`."""
    items = [(name, tuple(v) if isinstance(v := row.get(name), list) else v) for name in names]
    return set(itertools.combinations(items, 2))


def pairwise(
    rows: Sequence[Answers], names: Sequence[str], start: Iterable[Answers] = (), tries: int = 8
) -> list[Answers]:
    """Rows of `rows` (valid combinations) in which every pair of values of two factors in `names` that some
    valid row has appears at least once, beginning with `start`. The shortest of `tries` greedy covers, each
    breaking ties between equally good rows with its own fixed seed, so the result never changes."""
    start = list(start)
    return min((greedy_cover(rows, names, start, random.Random(seed)) for seed in range(tries)), key=len)


def greedy_cover(
    rows: Sequence[Answers], names: Sequence[str], start: list[Answers], rng: random.Random
) -> list[Answers]:
    """`start`, then again and again a row that covers most of the pairs still missing."""
    row_pairs = [pairs(row, names) for row in rows]
    missing = set().union(*row_pairs) - set().union(*(pairs(row, names) for row in start))
    chosen = list(start)
    while missing:
        gains = [len(found & missing) for found in row_pairs]
        best = rng.choice([i for i, gain in enumerate(gains) if gain == max(gains)])
        chosen.append(rows[best])
        missing -= row_pairs[best]
    return chosen


def project_onto(rows: Iterable[Mapping[str, object]], names: Sequence[str]) -> list[Answers]:
    """`rows` reduced to the factors `names`, each distinct row once, in order."""
    found: dict[tuple, Answers] = {}
    for row in rows:
        reduced = {name: row[name] for name in names if name in row}
        found.setdefault(frozen(reduced), reduced)
    return list(found.values())


def template_files(repo: Path = REPO) -> Iterator[str]:
    """The files of the working tree that a copy of the template needs: tracked or new, not git-ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    yield from (name for name in listed.split("\0") if name and (repo / name).is_file())


def snapshot(dst: Path, repo: Path = REPO) -> Path:
    """The working tree (uncommitted changes included) copied to `dst` without .git, so Copier renders from
    it directly instead of cloning the repository for every project."""
    for name in template_files(repo):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dst / name)
    return dst


def label(row: Mapping[str, object]) -> str:
    """A short name for a row, for test ids: its values in order, lists joined by '+', bools by name."""
    parts = []
    for name, value in row.items():
        if isinstance(value, bool):
            parts.append(name if value else f"no_{name}")
        else:
            parts.append("+".join(value) if isinstance(value, list) else str(value))
    return "-".join(parts)


@dataclass(frozen=True)
class Rendered:
    """One combination rendered: where, what Copier recorded, and each file's SHA-256 by relative path."""

    answers: Answers
    root: Path
    recorded: dict[str, object]
    files: dict[str, str]


def fast_renders() -> None:
    """Initializer of a render process: Copier then renders the same files in about a quarter of the time.

    With git on PATH, Copier runs `git` once per written file to sync a git index's executable bits; these
    projects are no git repositories, so there is nothing to sync, and without a PATH Copier skips it (tasks
    are skipped, so nothing else is run). Every render builds a fresh Jinja environment with the same settings
    and compiles the same ~1,100 sources again (file names, contents, the answers file's path); compiling is a
    pure function of the source and those settings, so the process keeps the code objects. test_matrix.py
    checks that renders made this way equal conftest.render()'s.
    """
    plumbum.local.env["PATH"] = os.devnull
    compile_source = Environment.compile
    compiled: dict[tuple, object] = {}

    @functools.wraps(compile_source)
    def compile_once(self, source, name=None, filename=None, raw=False, defer_init=False):
        if raw or not isinstance(source, str):
            return compile_source(self, source, name, filename, raw, defer_init)
        key = (jinja_settings(self), source, name, filename, defer_init)
        if key not in compiled:
            compiled[key] = compile_source(self, source, name, filename, raw, defer_init)
        return compiled[key]

    Environment.compile = compile_once  # type: ignore[method-assign]


def jinja_settings(env: Environment) -> tuple:
    """Everything of an environment that the code Jinja compiles depends on."""
    return (
        type(env),
        tuple(sorted(env.extensions)),
        env.block_start_string,
        env.block_end_string,
        env.variable_start_string,
        env.variable_end_string,
        env.comment_start_string,
        env.comment_end_string,
        env.line_statement_prefix,
        env.line_comment_prefix,
        env.trim_blocks,
        env.lstrip_blocks,
        env.newline_sequence,
        env.keep_trailing_newline,
        env.optimized,
        env.is_async,
        env.autoescape if isinstance(env.autoescape, bool) else id(env.autoescape),
    )


def render_files(source: Path, answers: Answers, dst: Path) -> Rendered:
    """`copier copy --defaults` of the snapshot `source` without tasks, as the render tests do."""
    copier.run_copy(
        str(source), str(dst), data=dict(answers), defaults=True, unsafe=True, quiet=True, skip_tasks=True
    )
    files = {
        path.relative_to(dst).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(dst.rglob("*"))
        if path.is_file()
    }
    recorded = yaml.safe_load((dst / ".copier-answers.yml").read_text())
    return Rendered(dict(answers), dst, recorded, files)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        matrix = Matrix(load_questions(), copier_jinja(snapshot(Path(scratch))))
        combinations = matrix.combinations()
    sizes = " x ".join(f"{name} {len(values)}" for name, values in matrix.factors.items())
    print(f"{len(combinations)} valid combinations ({sizes} before validators)")
    for row in pairwise(combinations, list(matrix.factors)):
        print(row)


if __name__ == "__main__":
    main()
