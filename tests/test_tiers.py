"""The test command's tiers, as CI runs them: fast tests first, a failing fast test stops the run before any
slow one installs a project, and `release` tests wait for the release workflow (`-m ""` runs them). The same
holds on the two workers `uv run pytest` starts (`-n 2`) as on one (`-n 0`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

# Each test writes its name to ran.txt when it runs: a worker's output does not reach the controller's.
RECORD = (
    "from pathlib import Path\n\n\n"
    "def ran(name):\n    with Path('ran.txt').open('a') as f:\n        f.write(name + '\\n')\n"
)
TESTS = {
    "test_a_slow_story.py": "import pytest\nfrom record import ran\n\n\n@pytest.mark.slow\ndef test_slow():\n"
    "    ran('slow')\n",
    "test_b_fast.py": "from record import ran\n\n\ndef test_fast_passes():\n    ran('fast')\n",
    "test_c_release.py": "import pytest\nfrom record import ran\n\n\n@pytest.mark.release\n"
    "def test_exhaustive():\n    ran('release')\n",
}
WORKERS = ["0", "2"]


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The generator's pytest settings and conftest on a folder of tiny tests."""
    command = [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(folder)]
    return subprocess.run(
        [*command, "-p", "no:cacheprovider", *args, "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ran(folder: Path) -> list[str]:
    record = folder / "ran.txt"
    return record.read_text().split() if record.exists() else []


@pytest.fixture
def suite(tmp_path) -> Path:
    shutil.copy(REPO / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "record.py").write_text(RECORD)
    for name, text in TESTS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("workers", WORKERS)
def test_a_failing_fast_test_stops_the_run_before_the_slow_tier(suite, workers):
    more = "".join(f"\n\ndef test_fast_{n}():\n    ran('fast')\n" for n in range(6))
    failing = "\n\ndef test_fast_fails():\n    assert False\n"
    (suite / "test_b_fast.py").write_text(TESTS["test_b_fast.py"] + failing + more)
    result = pytest_in(suite, "-n", workers)
    assert result.returncode in (1, 2), result.stdout  # 2: xdist reports the stop as an interruption
    assert "1 failed" in result.stdout, result.stdout
    assert "slow" not in ran(suite), result.stdout  # collected first in file order, never reached
    assert "a fast test failed" in result.stdout, result.stdout


@pytest.mark.parametrize("workers", WORKERS)
def test_the_slow_tier_runs_after_a_green_fast_tier(suite, workers):
    more = "".join(f"\n\ndef test_fast_{n}():\n    ran('fast')\n" for n in range(6))
    (suite / "test_b_fast.py").write_text(TESTS["test_b_fast.py"] + more)
    result = pytest_in(suite, "-n", workers)
    assert result.returncode == 0, result.stdout
    assert ran(suite) == ["fast"] * 7 + ["slow"], result.stdout


@pytest.mark.parametrize("workers", WORKERS)
def test_a_run_of_slow_tests_alone_does_not_wait_for_a_fast_tier(suite, workers):
    """`-m release` (the release workflow's tier) selects no fast test: the slow ones run at once."""
    result = pytest_in(suite, "-n", workers, "-m", "slow and not release")
    assert result.returncode == 0, result.stdout
    assert ran(suite) == ["slow"], result.stdout


def test_the_release_workflows_mark_expression_runs_the_release_tier(suite):
    result = pytest_in(suite, "-m", "")
    assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout
    assert sorted(ran(suite)) == ["fast", "release", "slow"], result.stdout


def test_the_fast_tier_alone_leaves_release_tests_out_too(suite):
    result = pytest_in(suite, "-m", "not slow")
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout
    assert ran(suite) == ["fast"], result.stdout


def test_the_generators_tests_do_not_inherit_the_library_suites_scratch_variables():
    """runtime/tests/conftest.py sets its scratch store, model store and Prefect home while its modules are
    imported; on two workers the controller imports it too. Every project a generator test installs takes this
    process's environment, so a leaked variable points them all at one store."""
    leaked = sorted(name for name, value in os.environ.items() if "ml-lifecycle-tests-" in value)
    assert leaked == [], f"the library suite's scratch variables leaked into the generator's tests: {leaked}"
