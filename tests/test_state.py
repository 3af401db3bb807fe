"""State belongs to its project: two projects with the same package name, side by side in one home, each with
its own model store and production alias, as a user has them (no BENTOML_HOME, no PREFECT_HOME exported).

Before, both used ~/bentoml: a promotion in one changed what the other served, and the main job failed the
second time it ran (tests/test_demo.py runs that one).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Project, explain, with_library

pytestmark = pytest.mark.slow

# Run as `python -c STORE <package>` in a project: what its store holds and what it would serve.
STORE = with_library("""
import json, sys
import bentoml
settings = internal("config").get_settings()
aliases = internal("registry.aliases")
try:
    production = aliases.production_tag(settings)
except LookupError:
    production = None
models = sorted(str(m.tag) for m in bentoml.models.list(settings.model_name))
print(json.dumps({"store": str(settings.bentoml_home), "production": production, "models": models}))
""")


def as_a_user(project: Project, home: Path, uv_cache: str) -> Project:
    """The project as its user runs it: their home, nothing exported for the model store or Prefect."""
    env = {k: v for k, v in project.env.items() if k not in {"BENTOML_HOME", "PREFECT_HOME"}}
    return Project(project.root, project.package, {**env, "HOME": str(home), "UV_CACHE_DIR": uv_cache})


@pytest.fixture(scope="module")
def twins(installed, tmp_path_factory) -> tuple[Project, Project, Path]:
    """Two installed projects with the same package name (the default answers, and the name given
    explicitly) and one home directory for both."""
    home = tmp_path_factory.mktemp("home")
    found = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=True)
    uv_cache = found.stdout.strip()
    first = installed({})
    second = installed({"package_name": first.package})
    assert second.root != first.root and second.package == first.package
    return as_a_user(first, home, uv_cache), as_a_user(second, home, uv_cache), home


def train(project: Project) -> dict:
    trained = project.cli("train", "--n-trials", "2")
    assert trained.returncode == 0, explain(trained)
    return project.query(STORE)


def test_a_promotion_in_one_project_leaves_its_namesake_untouched(twins):
    first, second, home = twins
    mine = train(first)
    assert mine["production"] in mine["models"]
    assert Path(mine["store"]) == first.root / ".state" / "bentoml"

    theirs = train(second)
    assert Path(theirs["store"]) == second.root / ".state" / "bentoml"
    assert theirs["production"] != mine["production"]
    assert mine["production"] not in theirs["models"], "the second project sees the first one's model"
    assert first.query(STORE) == mine, "training the namesake changed the first project's store or alias"


def test_nothing_lands_in_the_home_directory(twins):
    first, second, home = twins
    for project in (first, second):
        if project.query(STORE)["production"] is None:
            train(project)
    assert sorted(p.name for p in home.iterdir()) == []
