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
