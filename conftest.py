"""The test command's tiers, for the generator's tests (tests/) and the library's (runtime/tests/) alike: a
hook in tests/conftest.py would not reach runtime/tests, so they live at the root."""

import pytest


def pytest_itemcollected(item: pytest.Item) -> None:
    """A release test is a slow one too, so `-m "not slow"` stays the fast tier."""
    if item.get_closest_marker("release") is not None:
        item.add_marker(pytest.mark.slow)


def is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier runs first: a broken render or validator shows in seconds, not after the installs."""
    items.sort(key=is_slow)  # stable: each tier keeps the modules' own order


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
