"""The test command's tiers, for the generator's tests (tests/) and the library's (runtime/tests/) alike: a
hook in tests/conftest.py would not reach runtime/tests, so they live at the root.

`uv run pytest` runs on two workers (pytest-xdist, `-n 2 --dist loadgroup` in pyproject.toml): the fast
tests one by one, each slow module whole on one worker (its module fixtures, its project), and no slow test
before the last fast one has passed (TiersScheduling)."""

import shutil
import tempfile
import time
from pathlib import Path

import pytest

# The slow modules that take longest (the per-module seconds every run prints), started first so that the
# two workers finish together instead of one running the demo alone at the end. The others follow in file
# order.
LONGEST_FIRST = (
    "tests/test_demo.py",
    "tests/test_project.py",
    "tests/test_packaging.py",
    "tests/test_adoption.py",
    "tests/test_environments.py",
    "tests/test_update.py",
    "tests/test_monitor_log_settings.py",
    "tests/test_serving_benchmark.py",
    "tests/test_training_runs.py",
    "tests/test_generator_benchmarks.py",
    "tests/test_shared_store.py",
)


def pytest_itemcollected(item: pytest.Item) -> None:
    """A release test is a slow one too, so `-m "not slow"` stays the fast tier. A slow module is one unit
    of work for the workers: its module-scoped fixtures (an installed project, servers) are built once."""
    if item.get_closest_marker("release") is not None:
        item.add_marker(pytest.mark.slow)
    if is_slow(item):
        item.add_marker(pytest.mark.xdist_group(SLOW_GROUP + item.nodeid.split("::")[0]))


SLOW_GROUP = "slow:"


def is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


def run_order(item: pytest.Item) -> tuple[bool, int]:
    """Fast tests first, then the slow modules, the longest first; stable otherwise."""
    module = item.nodeid.split("::")[0]
    rank = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
    return is_slow(item), rank if is_slow(item) else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier runs first: a broken render or validator shows in seconds, not after the installs."""
    items.sort(key=run_order)  # stable: each tier keeps the modules' own order


# Two workers keep the tiers through files in one folder of the controller's: FAST_FAILED when a fast test
# fails, FAST_DONE when every fast test has run. A worker waits for one of them before its first slow test.
FAST_FAILED, FAST_DONE = "fast-failed", "fast-done"


def tiers_folder(config: pytest.Config) -> Path | None:
    """The controller's folder for the tier files, as a worker sees it; None without workers."""
    if hasattr(config, "workerinput"):
        return Path(config.workerinput["tiers"])
    return getattr(config, "tiers", None)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    node.workerinput["tiers"] = str(node.config.tiers)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's loadgroup scheduler, which also writes FAST_DONE once the last fast test has run."""
    from xdist.scheduler import LoadGroupScheduling

    class TiersScheduling(LoadGroupScheduling):
        def schedule(self) -> None:
            super().schedule()
            self.note_fast_tier_done()  # a run with no fast test at all (`-m release`) must not wait

        def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            self.note_fast_tier_done()

        def note_fast_tier_done(self) -> None:
            queued = any(not scope.startswith(SLOW_GROUP) for scope in self.workqueue)
            running = any(
                not scope.startswith(SLOW_GROUP) and not all(tests.values())
                for work in self.assigned_work.values()
                for scope, tests in work.items()
            )
            if not (queued or running):
                (config.tiers / FAST_DONE).touch()

    if config.getvalue("dist") == "loadgroup":
        return TiersScheduling(config, log)
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller: a failed fast test is written down for the workers (wait_for_the_fast_tier)."""
    worker = getattr(report, "node", None)  # set by xdist's controller on a worker's report
    if worker is not None and report.failed and "slow" not in report.keywords:
        (worker.config.tiers / FAST_FAILED).touch()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A worker's slow test waits until no fast test is left to run on any worker, and is not run at all
    when one failed: the fast tier stops the run before a slow module installs a project, on two workers
    as on one. Written here because xdist has no notion of tiers."""
    folder = tiers_folder(item.config)
    if folder is None or not is_slow(item) or not hasattr(item.config, "workerinput"):
        return
    deadline = time.monotonic() + FAST_TIER_DEADLINE
    while not (folder / FAST_DONE).exists() and not (folder / FAST_FAILED).exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the fast tier did not finish within {FAST_TIER_DEADLINE} s on the other worker")
        time.sleep(0.2)  # polls files another process writes; a deadline bounds it
    if (folder / FAST_FAILED).exists():
        item.session.shouldfail = "a fast test failed on another worker: the slow tier is not run"
        pytest.skip("a fast test failed: the slow tier is not run")


FAST_TIER_DEADLINE = 1800


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failing fast test stops the run: the slow tier would spend half an hour installing projects from a
    template already known to be broken."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and not is_slow(item):
        item.session.shouldfail = f"a fast test failed ({item.nodeid}): the slow tier is not run"


class ModuleTimes:
    """Seconds per test module (setup, call and teardown summed), printed at the end of every run: a CI log
    then shows which modules the time goes to (their installs and training are in setup), not only the
    30 slowest phases."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.tests: dict[str, set[str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        module = report.nodeid.split("::")[0]
        self.seconds[module] = self.seconds.get(module, 0.0) + report.duration
        self.tests.setdefault(module, set()).add(report.nodeid)

    def lines(self) -> list[str]:
        """One line a module, slowest first (seconds, tests, module), then the total."""
        rows = sorted(self.seconds.items(), key=lambda item: item[1], reverse=True)
        width = len(f"{sum(self.seconds.values()):.1f}")
        lines = [f"{seconds:>{width}.1f}s {len(self.tests[m]):>4} tests  {m}" for m, seconds in rows]
        return [*lines, f"{sum(self.seconds.values()):>{width}.1f}s total in {len(rows)} modules"]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.seconds:
            terminalreporter.write_sep("=", "seconds per module (setup, call and teardown)")
            for line in self.lines():
                terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ModuleTimes(), "module-times")
    if config.getoption("dist", default="no") != "no" and not hasattr(config, "workerinput"):
        config.tiers = Path(tempfile.mkdtemp(prefix="pytest-tiers-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config, "tiers", None) is not None:
        shutil.rmtree(config.tiers, ignore_errors=True)


class S3Server:
    """moto's S3 server on 127.0.0.1 (offline; conditional writes answered with 412 as AWS does), shared by
    the library's tests and the generator's. `bucket()` makes a fresh bucket; `environ` points a process at
    it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.created = 0

    @property
    def environ(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def bucket(self, prefix: str = "test") -> str:
        """A new, empty bucket's name (moto takes an unsigned CreateBucket)."""
        import httpx

        self.created += 1
        name = f"{prefix}-{self.created}"
        httpx.put(f"{self.endpoint}/{name}", timeout=10).raise_for_status()
        return name


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.server.stop()


@pytest.fixture
def s3_environ(s3_server, monkeypatch) -> S3Server:
    """This process pointed at the S3 server with test credentials."""
    for name, value in s3_server.environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_server
