"""The summary of seconds per test module that ends every run (the root conftest.py): CI logs rely on it."""

from __future__ import annotations

from conftest import REPO

pytest_plugins = ["pytester"]


def test_every_module_gets_its_tests_and_seconds_slowest_first(pytester):
    pytester.makeconftest((REPO / "conftest.py").read_text())
    pytester.makepyfile(
        test_quick="def test_one():\n    pass\n\ndef test_two():\n    pass\n",
        test_heavy=(
            "import time\n\nimport pytest\n\n\n@pytest.fixture\ndef spent():\n    time.sleep(0.3)\n\n\n"
            "def test_setup_counts(spent):\n    pass\n"
        ),
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    start = next(i for i, line in enumerate(result.outlines) if "seconds per module" in line)
    summary = result.outlines[start:]
    heavy, quick, total = summary[1:4]
    assert heavy.endswith("1 tests  test_heavy.py") and float(heavy.split("s")[0]) >= 0.3, summary
    assert quick.endswith("2 tests  test_quick.py"), summary
    assert total.endswith("total in 2 modules"), summary
