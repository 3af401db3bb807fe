"""Shipping a trained project, through its own command line: batch scoring, the Bento and its Dockerfile, the
Bento served where no production alias exists (as in a container), ONNX export, and a local deploy that rolls
back a model that cannot be loaded.

One project (the regression answer set: a CSV with numbers, text categories and missing values, gradient
boosting) is rendered with its tasks, installed and trained once. No image is built: there is no Docker
engine here, and `bentoml build` already writes the Dockerfile that `bentoml containerize` would use.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import (
    ANSWER_SETS,
    Project,
    copy_project,
    explain,
    free_port,
    started,
    with_library,
)

pytestmark = pytest.mark.slow

ANSWERS = ANSWER_SETS["regression_csv"]

# Run in the project's environment with the package name as argv[1]: the production tag and real rows.
PRODUCTION = with_library("""
import json, sys
settings = internal("config").get_settings()
aliases, validation = (
    internal(m) for m in ("registry.aliases", "training.validation")
)
features = validation.load_dataset(settings).features
print(json.dumps({
    "tag": aliases.production_tag(settings),
    "rows": json.loads(features.head(5).to_json(orient="records")),
    "columns": list(features.columns),
}))
""")
# A model that registers fine but cannot be loaded where it is served: its pipeline is pickled by reference
# to a module (`vanishing`) that only this script can import. It is then made production, as a promotion
# would, so that `deploy` has something to fail on.
VANISHING = '''
from sklearn.base import BaseEstimator


class Vanishing(BaseEstimator):
    """Not importable by the server."""
'''
REGISTER_BROKEN = with_library("""
import json, sys
from vanishing import Vanishing
settings = internal("config").get_settings()
aliases, registry = (
    internal(m) for m in ("registry.aliases", "registry.store")
)
production = registry.load(aliases.production_tag(settings))
tag = registry.save(
    settings, Vanishing(), schema=production.schema, reference=production.reference,
    metrics={}, params={}, data_hash="broken",
)
aliases.change(
    settings, lambda record: record.history.append(aliases.entry(tag, "cannot be loaded, on purpose"))
)
print(json.dumps({"tag": tag}))
""")
READ_TABLE = """
import json, sys
import pandas as pd
frame = pd.read_parquet(sys.argv[2])
versions = sorted(set(frame["model_version"]))
print(json.dumps({"columns": list(frame.columns), "rows": len(frame), "versions": versions}))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def project(home, pristine, prefect_home) -> Iterator[Project]:
    """A copy of the session's regression_csv install (its CSV included), trained here."""
    installed = copy_project(
        pristine(ANSWERS), home, prefect_home, settings={"SERVING__PORT": str(free_port())}
    )
    trained = installed.cli("train", "--n-trials", "3")
    assert trained.returncode == 0, explain(trained)
    yield installed
    installed.cli("deploy", "--stop")  # whatever a failed test left serving


@pytest.fixture(scope="module")
def production(project) -> dict:
    return project.query(PRODUCTION)


def write_batch(project: Project, rows: list[dict], name: str) -> Path:
    path = project.root / "data" / name
    columns = list(rows[0])
    lines = [",".join(columns)] + [",".join("" if r[c] is None else str(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_predict_scores_a_file_with_the_production_model(project, production):
    source = write_batch(project, production["rows"], "batch.csv")
    result = project.cli("predict", "--input", str(source), "--output", "scored/batch.parquet")
    assert result.returncode == 0, explain(result)
    scored = project.run("uv", "run", "python", "-c", READ_TABLE, project.package, "scored/batch.parquet")
    table = json.loads(scored.stdout.strip().splitlines()[-1])
    assert table["rows"] == len(production["rows"])
    assert table["columns"] == [*production["columns"], "prediction", "model_version"]
    assert table["versions"] == [production["tag"]]


def test_predict_names_the_file_and_the_missing_column(project, production):
    column = production["columns"][0]
    rows = [{k: v for k, v in row.items() if k != column} for row in production["rows"]]
    source = write_batch(project, rows, "incomplete.csv")
    result = project.cli("predict", "--input", str(source), "--output", "scored/incomplete.csv")
    assert result.returncode == 2, explain(result)
    assert f"incomplete.csv: column(s) ['{column}'] missing" in result.stderr
    assert not (project.root / "scored" / "incomplete.csv").exists()


@pytest.fixture(scope="module")
def bento(project, production, home) -> dict:
    """`bentoml build` as a user runs it, with the production model pinned as the Bento argument."""
    result = project.run(
        "uv", "run", "bentoml", "build", "--output", "tag", "--arg", f"model_tag={production['tag']}"
    )
    assert result.returncode == 0, explain(result)
    tag = result.stdout.strip().splitlines()[-1].split("__tag__:")[-1]
    name, version = tag.split(":")
    return {"tag": tag, "path": home / "bentoml" / "bentos" / name / version}


def test_bento_build_writes_the_dockerfile_and_packs_what_the_service_needs(bento, project, production):
    path = bento["path"]
    assert (path / "env" / "docker" / "Dockerfile").is_file()
    assert "ENTRYPOINT" in (path / "env" / "docker" / "Dockerfile").read_text()
    assert (path / "src" / "settings.toml").is_file()
    assert (path / "src" / project.package / "service.py").is_file()
    # The library is no source of the Bento but a requirement: BentoML builds the project's git pin into an
    # sdist in src/wheels/ (the Dockerfile installs from src/), so the image needs no template repository.
    assert not (path / "src" / "ml_lifecycle").exists()
    (sdist,) = [p.name for p in (path / "src" / "wheels").glob("ml_lifecycle-*.tar.gz")]
    requirements = (path / "env" / "python" / "requirements.txt").read_text()
    assert f"./wheels/{sdist}" in requirements.splitlines(), requirements
    assert "git+file://" not in requirements
    info = yaml.safe_load((path / "bento.yaml").read_text())
    assert info["args"] == {"model_tag": production["tag"]}
    assert [m["tag"] for s in info["services"] for m in s["models"]] == [production["tag"]]


@contextlib.contextmanager
def bentoml_serve(project: Project, target: str, *, cwd: Path, env: dict, log: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(project.root / ".venv" / "bin" / "bentoml"), "serve", target, "--port", str(port)]
    with started(command, cwd=cwd, env=env, log=log, ready_url=f"{base}/readyz"):
        yield base


def test_the_bento_serves_its_model_where_no_production_alias_exists(bento, project, production, tmp_path):
    """As in a container: a fresh BentoML home holding only the imported Bento (and its model)."""
    archive = tmp_path / "model.bento"
    exported = project.run("uv", "run", "bentoml", "export", bento["tag"], str(archive))
    assert exported.returncode == 0, explain(exported)
    fresh = {**project.env, "BENTOML_HOME": str(tmp_path / "fresh-home")}
    imported = project.run("uv", "run", "bentoml", "import", str(archive), **fresh)
    assert imported.returncode == 0, explain(imported)
    assert not (tmp_path / "fresh-home" / "aliases").exists()
    with bentoml_serve(project, bento["tag"], cwd=tmp_path, env=fresh, log=tmp_path / "serve.log") as base:
        response = httpx.post(f"{base}/predict", json={"rows": production["rows"]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == production["tag"]


def test_export_onnx_checks_the_model_against_scikit_learn(project, production):
    result = project.cli("export-onnx")
    assert result.returncode == 0, explain(result)
    assert "ONNX Runtime agrees with scikit-learn" in result.stdout
    assert "(holdout)" in result.stdout
    exported = project.root / "dist" / "edge" / f"{production['tag'].replace(':', '-')}.onnx"
    assert exported.stat().st_size > 1000


def served_version(project: Project, rows: list[dict]) -> str:
    url = f"http://127.0.0.1:{project.env[f'{project.package.upper()}_SERVING__PORT']}"
    response = httpx.post(f"{url}/predict", json={"rows": rows}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_deploy_serves_production_and_rolls_back_a_model_that_cannot_load(project, production, tmp_path):
    deployed = project.cli("deploy")
    assert deployed.returncode == 0, explain(deployed)
    state = json.loads((project.root / ".state" / "deploy" / "serve.json").read_text())
    assert int((project.root / ".state" / "deploy" / "serve.pid").read_text()) == state["pid"]
    assert served_version(project, production["rows"]) == production["tag"]

    (tmp_path / "vanishing.py").write_text(VANISHING)
    registered = project.run(
        "uv", "run", "python", "-c", REGISTER_BROKEN, project.package, PYTHONPATH=str(tmp_path)
    )
    assert registered.returncode == 0, explain(registered)
    broken = json.loads(registered.stdout.strip().splitlines()[-1])["tag"]

    failed = project.cli("deploy")
    assert failed.returncode == 1, explain(failed)
    assert f"({broken}) is not ready" in failed.stderr
    assert f"Production alias is now {production['tag']}" in failed.stderr
    assert f"Restarted the previous Bento {state['bento']}" in failed.stderr
    assert project.query(PRODUCTION)["tag"] == production["tag"]
    assert served_version(project, production["rows"]) == production["tag"]
    restarted = json.loads((project.root / ".state" / "deploy" / "serve.json").read_text())
    assert restarted["bento"] == state["bento"] and restarted["pid"] != state["pid"]

    stopped = project.cli("deploy", "--stop")
    assert stopped.returncode == 0, explain(stopped)
    assert not (project.root / ".state" / "deploy" / "serve.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(restarted["pid"], 0)
