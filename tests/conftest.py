"""Shared helpers: the answer sets every test renders, rendering itself, and data a user would bring.

Render-only tests pass `run_tasks=False` (no `uv lock`), so the fast tests need neither uv nor a network.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import json
import operator
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import copier
import httpx
import plumbum
import pytest
import yaml
from copier.errors import DirtyLocalWarning
from filelock import FileLock

from flows.projects import INSTALL, unpinned_commit

REPO = Path(__file__).resolve().parents[1]


# Each set is what a user answers; every other question keeps its default from copier.yml.
ANSWER_SETS: dict[str, dict[str, object]] = {
    "default": {},
    "regression_csv": {
        "task_type": "regression",
        "model_family": "gradient_boosting",
        "data_path": "data/train.csv",
        "target_column": "price",
        "ci_provider": "gitlab",
        "python_version": "3.12",
        "work_pool_type": "docker",
        "use_dvc": True,
    },
    "linear_none": {
        "model_family": "linear",
        "ci_provider": "none",
        "project_name": "42 Things",
        # Non-default values, so a template that hardcodes the defaults cannot pass the render tests.
        "n_trials": 7,
        "drift_threshold": 0.25,
        "train_schedule": "30 2 * * *",
        "monitor_schedule": "*/15 * * * *",
        "timezone": "Europe/Berlin",
        "work_pool": "ml-pool",
        "work_pool_type": "kubernetes",
        "flow_image": "registry.example.com/ml/42-things-flows:1.0",
        "gpus": 1,
        "environments": ["dev", "staging", "prod"],
    },
}


def find_python(version: str) -> str | None:
    """An interpreter for `version` that uv can use without downloading one (it cannot here: no internet).

    uv finds the active interpreter on PATH; others installed with pyenv are only behind shims that fail.
    None when there is none: uv then looks (and may download) on its own.
    """
    found = subprocess.run(  # --system: not the generator's own .venv, which uv would find first
        ["uv", "python", "find", "--system", version], capture_output=True, text=True, check=False
    )
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    return str(candidates[-1]) if candidates else None


@contextlib.contextmanager
def uv_python(version: str) -> Iterator[None]:
    """Point uv at a local `version` for the `uv lock` task that Copier runs from this process.

    Copier runs tasks with plumbum's copy of the environment (taken when plumbum was imported), so the
    variable goes into both that copy and os.environ.
    """
    interpreter = find_python(version) if shutil.which("uv") else None
    if interpreter is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch, plumbum.local.env(UV_PYTHON=interpreter):
        patch.setenv("UV_PYTHON", interpreter)
        yield


def subprocess_env(**extra: str) -> dict[str, str]:
    """The user's environment for a generated project's commands: without the generator's virtualenv,
    import path, model store or Prefect API, with Prefect's local server quiet and patient on two cores."""
    generators = {"VIRTUAL_ENV", "PYTHONPATH", "BENTOML_HOME", "PREFECT_API_URL"}
    env = {k: v for k, v in os.environ.items() if k not in generators}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    )
    return {**env, **extra}


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 30) -> tuple:
    """Signal a process's whole group (uv and everything under it), SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        return process.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()


def run(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command to the end in its own process group. On timeout the group gets SIGINT first, so the
    command's own cleanup (servers it started) runs, and the test fails with the output so far."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(process, signal.SIGINT, grace=60)
        pytest.fail(f"{command} did not finish in {timeout:.0f} s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def explain(result: subprocess.CompletedProcess) -> str:
    """The end of a command's output, for assertion messages."""
    out, err = result.stdout[-4000:], result.stderr[-4000:]
    return f"exit {result.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def goals_judged(report: dict, keys: set[str]) -> None:
    """A benchmark's report writes out its goals (`goals`: {"ratio": ">= 0.8"}) and judges them
    (`goal_met`, `all_goals_met`): the goals are `keys`, and each verdict is what the written goal says of the
    report's own figure (None for a figure the run did not measure)."""
    assert set(report["goals"]) == keys == set(report["goal_met"]), report
    compare = {">=": operator.ge, "<=": operator.le, "==": operator.eq}
    for key, goal in report["goals"].items():
        sign, _, written = goal.partition(" ")
        bound = {"True": True, "False": False}.get(written)
        bound = float(written) if bound is None else bound
        value = report.get(key)
        expected = None if value is None else compare[sign](value, bound)
        assert report["goal_met"][key] is expected, (key, goal, value, report["goal_met"])
    assert report["all_goals_met"] is all(met is True for met in report["goal_met"].values()), report


# The Debian package that brings each outside tool the tests run (.ci/run installs them).
TOOL_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
    "chromium": "chromium",
    "hey": "hey",
}


def require_tool(name: str) -> str:
    """The path of the executable `name`; without it the test is skipped, saying what to install.

    With REQUIRE_ALL_TOOLS=1 (set by .ci/run) a missing tool fails the test instead, so CI cannot pass by
    silently skipping what it was meant to check.
    """
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed: apt-get install {TOOL_PACKAGES.get(name, name)}"
    if os.environ.get("REQUIRE_ALL_TOOLS") == "1":
        pytest.fail(f"{reason} (REQUIRE_ALL_TOOLS=1)")
    pytest.skip(reason)


# The library's process helpers (plain Python, no Jinja): the tests start PostgreSQL with the code the
# project's parallel tuning benchmark uses.
PROJECT_PROCESSES = REPO / "runtime" / "src" / "ml_lifecycle" / "_internal" / "local" / "processes.py"


def project_processes():
    """The library's local/processes.py, imported from its file (it imports nothing of the library)."""
    spec = importlib.util.spec_from_file_location("library_local_processes", PROJECT_PROCESSES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def postgres_server(*databases: str) -> Iterator:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with `databases`, stopped and deleted afterwards; yields
    the project's Postgres (`.url(database, driver)`). Without PostgreSQL's server installed the test is
    skipped, or fails under REQUIRE_ALL_TOOLS=1, like require_tool."""
    processes = project_processes()
    try:
        processes.postgres_bindir()
    except RuntimeError as exc:
        if os.environ.get("REQUIRE_ALL_TOOLS") == "1":
            pytest.fail(f"{exc} (REQUIRE_ALL_TOOLS=1)")
        pytest.skip(str(exc))
    with processes.postgres_server(databases) as server:
        yield server


def render(answers: dict[str, object], dst: Path, *, run_tasks: bool = False) -> Path:
    """`copier copy --trust --defaults` of this repository at HEAD. Uncommitted changes are copied too, but
    the project pins the library at the commit Copier copied, which then is a temporary one: only a project
    rendered from a committed tree installs (install_project says so)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DirtyLocalWarning)
        with uv_python(str(answers.get("python_version", "3.11"))):
            copier.run_copy(
                str(REPO),
                str(dst),
                data=dict(answers),
                defaults=True,
                unsafe=True,
                vcs_ref="HEAD",
                quiet=True,
                skip_tasks=not run_tasks,
            )
    return dst


def recorded_answers(project: Path) -> dict[str, object]:
    """All answers of a rendered project, defaults included, as Copier recorded them."""
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def package_of(project: Path) -> str:
    return str(recorded_answers(project)["package_name"])


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> Callable[[str], Path]:
    """Render an answer set once per session (no tasks) and hand out its folder; tests only read it."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = render(ANSWER_SETS[name], tmp_path_factory.mktemp(name) / "project")
        return cache[name]

    return get


@pytest.fixture(params=list(ANSWER_SETS))
def answer_set(request) -> str:
    """The name of an answer set: a test asking for `project` or `answers` runs once per set."""
    return request.param


@pytest.fixture
def project(rendered, answer_set) -> Path:
    """The answer set's rendered project (no tasks), shared by the session; tests only read it."""
    return rendered(answer_set)


@pytest.fixture(name="answers")
def project_answers(project) -> dict:
    """Every answer of the rendered project, defaults included."""
    return recorded_answers(project)


def write_regression_csv(project: Path, rows: int = 300, seed: int = 7) -> Path:
    """The data/train.csv a user brings: numbers, text categories, missing values and a `price` to predict.

    One column name has a capital and a space, as exported spreadsheets do; the project normalises it.
    Written with the standard library: the generator's environment has no pandas.
    """
    rng = random.Random(seed)
    city_premium = {"berlin": 0, "hamburg": 50_000, "munich": 120_000}
    path = project / "data" / "train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["area", "rooms", "Year Built", "city", "condition", "price"])
        for _ in range(rows):
            area = round(rng.uniform(30, 200), 1)
            rooms = rng.randint(1, 6)
            year_built = rng.randint(1950, 2023)
            city = rng.choice(list(city_premium))
            condition = rng.choice(["new", "good", "worn"])
            price = (
                3000 * area
                + 10_000 * rooms
                + 800 * (year_built - 1950)
                + city_premium[city]
                - (40_000 if condition == "worn" else 0)
                + rng.gauss(0, 15_000)
            )
            writer.writerow(
                [
                    area,
                    rooms,
                    "" if rng.random() < 0.1 else year_built,  # missing values, as real exports have
                    "" if rng.random() < 0.05 else city,
                    condition,
                    round(price),
                ]
            )
    return path


# Installed projects, used through their command line and HTTP API (test_project.py, test_service.py).


@dataclass(frozen=True)
class Project:
    root: Path
    package: str
    env: dict[str, str]

    def run(self, *command: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        """Run a command in the project folder, with the project's environment plus `env`."""
        return run(list(command), cwd=self.root, env={**self.env, **env}, timeout=timeout)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """`python -m <package> ...`, the project's own command line."""
        return self.run("uv", "run", "python", "-m", self.package, *args, **env)

    def query(self, script: str, **env: str):
        """Run a short script in the project's environment (plus `env`) and parse the JSON it prints last."""
        result = self.run("uv", "run", "python", "-c", script, self.package, **env)
        assert result.returncode == 0, explain(result)
        return json.loads(result.stdout.strip().splitlines()[-1])


LIBRARY_PRELUDE = """
import importlib
import sys

package = sys.argv[1]
importlib.import_module(package)


def internal(name):
    return importlib.import_module("ml_lifecycle._internal." + name)
"""


# Prepended to a script run in a project's environment (with or after LIBRARY_PRELUDE): "nothing else
# happened on these events" checked against something that would have happened. Prefect's triggers service
# evaluates an event that `follows` another only once it has finished evaluating that one; so a marker
# event following each event, matched by a throwaway automation, fires that automation only after every
# automation the event fires has fired (and published its prefect.automation.triggered event).
EVALUATION_WATCH = """
import time, uuid
from prefect.client.orchestration import get_client
from prefect.events import Event
from prefect.events.actions import DoNothing
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter, EventResourceFilter
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture


def until(what, check, seconds=90):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(1)
    return found


def post_events(events):
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[e.model_dump(mode="json") for e in events])


def automations_fired_by(event_id):
    \"\"\"Names of the automations whose prefect.automation.triggered event names `event_id`.\"\"\"
    related = EventRelatedFilter(resources_in_roles=[(f"prefect.event.{event_id}", "triggering-event")])
    wanted = EventFilter(event=EventNameFilter(name=["prefect.automation.triggered"]), related=related)
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=wanted, limit=50)
    return sorted(e.resource.get("prefect.resource.name", e.resource.id) for e in page.events)


class EvaluationWatch:
    \"\"\"A throwaway automation on marker events; `wait_until_evaluated(ids)` returns once the server's
    triggers service has finished with each of those events.\"\"\"

    def __enter__(self):
        self.name = f"test.marker.{uuid.uuid4().hex}"
        trigger = EventTrigger(
            expect={"test.marker"},
            match={"prefect.resource.id": self.name},
            posture=Posture.Reactive,
            threshold=1,
        )
        automation = AutomationCore(name=self.name, trigger=trigger, actions=[DoNothing()])
        with get_client(sync_client=True) as client:
            self.id = client.create_automation(automation)
        until("the test's automation is live", self._probe_fires)
        return self

    def __exit__(self, *exc):
        with get_client(sync_client=True) as client:
            client.delete_automation(self.id)

    def _marker(self, follows=None):
        return Event(event="test.marker", resource={"prefect.resource.id": self.name}, follows=follows)

    def _fired(self):
        \"\"\"The ids of the marker events that fired the automation so far.\"\"\"
        mine = EventResourceFilter(id=[f"prefect.automation.{self.id}"])
        wanted = EventFilter(event=EventNameFilter(name=["prefect.automation.triggered"]), resource=mine)
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=wanted, limit=50)
        causes = [r for e in page.events for r in e.related if r.role == "triggering-event"]
        return {r.id.removeprefix("prefect.event.") for r in causes}

    def _probe_fires(self):  # the server loads a new automation shortly after its creation: new probe a try
        probe = self._marker()
        post_events([probe])
        deadline = time.monotonic() + 15  # the persister writes events in batches, by default every 5 s
        while str(probe.id) not in (fired := self._fired()) and time.monotonic() < deadline:
            time.sleep(1)
        return str(probe.id) in fired

    def wait_until_evaluated(self, event_ids, seconds=90):
        markers = [self._marker(follows=event_id) for event_id in event_ids]
        post_events(markers)
        wanted = {str(m.id) for m in markers}
        until("the events' evaluation is over", lambda: wanted <= self._fired(), seconds)
"""


def with_library(script: str) -> str:
    """`script` (run in the project's environment, the package as argv[1]) after a prelude that imports the
    project, whose __init__ binds the library, and defines `internal("registry.aliases")` etc. for the
    library's private modules: tests may use them, a project does not."""
    return LIBRARY_PRELUDE + script


def project_env(python_version: str, prefect_home: Path, bentoml_home: Path) -> dict[str, str]:
    """Commands of one project use its Python (found locally), a model store of its own (never the
    user's ~/bentoml) and a Prefect home that is not the user's either."""
    interpreter = find_python(python_version)
    pinned = {"UV_PYTHON": interpreter} if interpreter else {}
    return subprocess_env(PREFECT_HOME=str(prefect_home), BENTOML_HOME=str(bentoml_home), **pinned)


def install_project(
    answers: dict[str, object],
    home: Path,
    prefect_home: Path,
    *,
    data: Callable[[Path], object] | None = None,
    settings: dict[str, str] | None = None,
    venv_from: Project | None = None,
) -> Project:
    """What a user does first: copy with the answers (tasks run, so uv.lock is written), add their data,
    `uv sync`. `settings` are the project's overrides without the package prefix, e.g. {"DATA__PATH": ...}.
    `venv_from`, an installed project on the same Python, lends its .venv (link_venv) to start from: the
    `uv sync` is still exact (it installs what this lock adds and removes what it lacks), without
    unpacking and compiling the ~30,000 files both have."""
    root = render(answers, home / "project", run_tasks=True)
    if data is not None:
        data(root)
    package = package_of(root)
    python_version = str(answers.get("python_version", "3.11"))
    env = project_env(python_version, prefect_home, home / "bentoml")
    env.update({f"{package.upper()}_{key}": value for key, value in (settings or {}).items()})
    project = Project(root, package, env)
    sync = ["uv", *INSTALL]  # as the README: compiled once, not at every `uv run`
    if venv_from is not None:
        lender = str(recorded_answers(venv_from.root).get("python_version", "3.11"))
        assert lender == python_version, f"venv_from runs Python {lender}, this project {python_version}"
        link_venv(venv_from.root, root)
        # Its editable install names the lender's folder: reinstalled, as copy_project does.
        sync += ["--reinstall-package", package]
    synced = project.run(*sync)
    assert synced.returncode == 0, unpinned_commit(root) or explain(synced)
    return project


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory) -> Path:
    """One Prefect home (ephemeral servers' SQLite database) for all projects, never the user's own."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="session")
def installed(request, tmp_path_factory, prefect_home) -> Callable[[dict[str, object]], Project]:
    """Install a project once per session for the same answers, whichever test module asks first
    (test_project.py runs its whole suite, test_matrix.py type-checks the matrix with its environment).
    A project answering a data_path gets the regression CSV a user would bring. The SHARED_SETS get a
    copy_project of their pristine install, which other modules copy too: one render and lock a session.
    Other answers are rendered and locked for themselves; on the default's Python they start from the
    default's .venv (install_project's venv_from)."""
    cache: dict[str, Project] = {}

    def get(answers: dict[str, object]) -> Project:
        key = json.dumps(answers, sort_keys=True)
        if key not in cache:
            home = tmp_path_factory.mktemp("installed")
            if any(answers == ANSWER_SETS[name] for name in SHARED_SETS):
                cache[key] = copy_project(request.getfixturevalue("pristine")(answers), home, prefect_home)
            else:
                data = write_regression_csv if answers.get("data_path") else None
                same_python = answers.get("python_version", "3.11") == "3.11"
                lender = request.getfixturevalue("default_installed") if same_python else None
                cache[key] = install_project(answers, home, prefect_home, data=data, venv_from=lender)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def benchmark_project(default_trained, tmp_path_factory, prefect_home) -> Path:
    """One default project from the committed HEAD, installed and trained (3 trials) once per session for
    the benchmarks that read it without changing what another reads (drift, recovery, serving, soak, tuning
    overhead, retrain latency: each keeps its servers, studies and Prefect homes in folders of its own);
    they get it as --project-dir. Rendering, `uv sync` and training once each was ~40 s a module.

    It is a copy_project of default_trained laid out as benchmarks/_project.py lays out its --project-dir
    (DIR/project, the store in the project's own .state/bentoml, as a project without BENTOML_HOME keeps
    it), which that script then reuses as it is: the same render, lock and `train --n-trials 3`, once a
    session instead of twice. The script's own install (render, sync, train) runs whenever a benchmark is
    run by hand, and in P5 (time to first prediction), which times exactly that."""
    workdir = tmp_path_factory.mktemp("benchmark-project")
    project = copy_project(default_trained, workdir, prefect_home)
    (project.root / ".state").mkdir(exist_ok=True)
    shutil.move(workdir / "bentoml", project.root / ".state" / "bentoml")
    command = [sys.executable, "benchmarks/_project.py", "--project-dir", str(workdir), "--quick"]
    result = run(command, cwd=REPO, env=subprocess_env(), timeout=1500)
    assert result.returncode == 0, explain(result)
    assert "training a production model" not in result.stderr, "the copy's production model was not found"
    return workdir


def link_venv(source: Path, target: Path) -> None:
    """`target`/.venv as hard links to `source`/.venv, its compiled bytecode included (compiling ~30,000
    files is most of a `uv sync`). Files naming the source folder (scripts' shebangs, activate) are written
    anew, never through a link; Python and uv replace files by rename, so the source never changes."""
    subprocess.run(["cp", "-al", str(source / ".venv"), str(target / ".venv")], check=True)
    old, new = str(source).encode(), str(target).encode()
    for path in (target / ".venv" / "bin").iterdir():
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if old in content:
            mode = path.stat().st_mode
            path.unlink()
            path.write_bytes(content.replace(old, new))
            path.chmod(mode)


def copy_project(
    source: Project, home: Path, prefect_home: Path, *, settings: dict[str, str] | None = None
) -> Project:
    """A module's own copy of an installed project, as install_project would have made it: the folder with
    .state, its .venv linked (link_venv), the source's model store in `home`, then `uv sync` from the same
    uv.lock, which only reinstalls the project itself (its editable install names the source). The copy's
    store, alias, studies and request log are its own; only rendering, resolving and training are shared."""
    root = home / "project"
    shutil.copytree(source.root, root, ignore=shutil.ignore_patterns(".venv"), symlinks=True)
    link_venv(source.root, root)
    store = Path(source.env["BENTOML_HOME"])
    if store.exists():
        shutil.copytree(store, home / "bentoml", symlinks=True)
    env = project_env(
        str(recorded_answers(root).get("python_version", "3.11")), prefect_home, home / "bentoml"
    )
    env.update({f"{source.package.upper()}_{key}": value for key, value in (settings or {}).items()})
    project = Project(root, source.package, env)
    synced = project.run("uv", "sync", "--reinstall-package", source.package)
    assert synced.returncode == 0, explain(synced)
    return project


# Answer sets that several slow modules install: each is rendered, locked and synced once a session
# (pristine) and every module, installed() included, takes a copy_project of it.
SHARED_SETS = ("default", "regression_csv")


@pytest.fixture(scope="session")
def pristine(tmp_path_factory, prefect_home) -> Callable[[dict[str, object]], Project]:
    """Install a project once per session for the same answers, never trained and never used by a test
    itself (tests mutate what they get): modules take a copy_project of it. A data_path answer gets the
    regression CSV a user would bring, written before the copies are taken."""
    cache: dict[str, Project] = {}

    def get(answers: dict[str, object]) -> Project:
        key = json.dumps(answers, sort_keys=True)
        if key not in cache:
            data = write_regression_csv if answers.get("data_path") else None
            cache[key] = built_once(
                tmp_path_factory,
                f"pristine-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
                lambda: install_project(
                    answers, tmp_path_factory.mktemp("pristine"), prefect_home, data=data
                ),
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def default_installed(pristine) -> Project:
    """The default project, installed once a session and never trained: copy_project it."""
    return pristine(ANSWER_SETS["default"])


@pytest.fixture(scope="session")
def default_trained(default_installed, tmp_path_factory, prefect_home) -> Project:
    """A copy of default_installed trained once (3 trials) with a production model; never used by a test
    itself: modules that serve or monitor the default project take a copy_project of it."""

    def train() -> Project:
        project = copy_project(default_installed, tmp_path_factory.mktemp("default-trained"), prefect_home)
        trained = project.cli("train", "--n-trials", "3")
        assert trained.returncode == 0, explain(trained)
        return project

    return built_once(tmp_path_factory, "default-trained", train)


def built_once(tmp_path_factory, name: str, build: Callable[[], Project]) -> Project:
    """A project no test changes (a pristine install, the trained default), built once a run: with
    `-n 2`, the first worker to ask builds it under a file lock and the other reads where it is, from the
    folder both workers' temporary folders are in."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build()
    record = tmp_path_factory.getbasetemp().parent / f"{name}.json"
    with FileLock(f"{record}.lock"):
        if record.exists():
            saved = json.loads(record.read_text())
            return Project(Path(saved["root"]), saved["package"], saved["env"])
        project = build()
        saved = {"root": str(project.root), "package": project.package, "env": project.env}
        record.write_text(json.dumps(saved))
        return project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def started(
    command: list[str], *, cwd: Path, env: dict[str, str], log: Path, ready_url: str, timeout: float = 180
) -> Iterator[subprocess.Popen]:
    """A server command in its own process group, its output in `log`; yields once `ready_url` answers
    200, and stops the whole group at the end."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not answers(ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-4000:]
                pytest.fail(f"{command[:6]} did not become ready (exit {process.poll()}):\n{tail}")
            time.sleep(1)
        yield process
    finally:
        stop_group(process)


@contextlib.contextmanager
def serving(project: Project, log: Path, timeout: float = 180, **env: str) -> Iterator[str]:
    """`python -m <package> serve`, with the project's environment plus `env`; yields its URL once /readyz
    answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = ["uv", "run", "python", "-m", project.package, "serve", "--port", str(port)]
    with started(command, cwd=project.root, env={**project.env, **env}, log=log, ready_url=f"{base}/readyz"):
        yield base


@contextlib.contextmanager
def prefect_server(project: Project, home: Path, **env: str) -> Iterator[str]:
    """`prefect server start` from the project's environment, SQLite in `home`; yields the UI's URL. The UI
    is told where its API is (PREFECT_SERVER_API_HOST/PORT), as any server opened in a browser must be;
    `env` adds to or overrides that."""
    port = free_port()
    ui_url = f"http://127.0.0.1:{port}"
    server_env = {
        **project.env,
        "PREFECT_HOME": str(home / "prefect-server"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        **env,
    }
    command = ["uv", "run", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log = home / "prefect-server.log"
    with started(command, cwd=project.root, env=server_env, log=log, ready_url=f"{ui_url}/api/health"):
        yield ui_url


def answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


@pytest.fixture(scope="session")
def releases(tmp_path_factory):
    """One throwaway template repository with its release tags (tests/releases.py) for the whole session."""
    from releases import make_releases

    return make_releases(tmp_path_factory.mktemp("releases") / "template")
