"""The test command's tiers, as CI runs them: fast tests first, a failing fast test stops the run before any
slow one installs a project, and `release` tests wait for the release workflow (`-m ""` runs them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

TESTS = {
    "test_a_slow_story.py": "import pytest\n\n\n@pytest.mark.slow\ndef test_slow():\n    print('SLOW RAN')\n",
    "test_b_fast.py": "def test_fast_passes():\n    pass\n",
    "test_c_release.py": "import pytest\n\n\n@pytest.mark.release\ndef test_exhaustive():\n    pass\n",
}


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The generator's pytest settings and conftest on a folder of tiny tests."""
    command = [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(folder)]
    return subprocess.run(
        [*command, "-p", "no:cacheprovider", "-s", *args, "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def suite(tmp_path) -> Path:
    shutil.copy(REPO / "conftest.py", tmp_path / "conftest.py")
    for name, text in TESTS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_failing_fast_test_stops_the_run_before_the_slow_tier(suite):
    failing = "\n\ndef test_fast_fails():\n    assert False\n"
    (suite / "test_b_fast.py").write_text(TESTS["test_b_fast.py"] + failing)
    result = pytest_in(suite)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 deselected" in result.stdout, result.stdout
    assert "SLOW RAN" not in result.stdout  # collected first in file order, run last, never reached
    assert "a fast test failed (test_b_fast.py::test_fast_fails)" in result.stdout


def test_the_slow_tier_runs_after_a_green_fast_tier(suite):
    result = pytest_in(suite, "-v")
    assert result.returncode == 0, result.stdout
    # The verbose lines only: --durations also names a test whose setup took 5 ms or more ("0.10s setup ...").
    order = [line.split(" ")[0] for line in result.stdout.splitlines() if line.startswith("test_")]
    assert order == ["test_b_fast.py::test_fast_passes", "test_a_slow_story.py::test_slow"], result.stdout


def test_the_release_workflows_mark_expression_runs_the_release_tier(suite):
    result = pytest_in(suite, "-m", "")
    assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout


def test_the_fast_tier_alone_leaves_release_tests_out_too(suite):
    result = pytest_in(suite, "-m", "not slow")
    assert result.returncode == 0 and "1 passed, 2 deselected" in result.stdout, result.stdout
