"""A service replica on another machine serves the model trained elsewhere, through the shared store only.

The installed default project trains with storage.url on an S3-compatible server (moto on 127.0.0.1);
then `serve` starts with a BentoML home that never saw the training (as a replica on another machine, or
a fresh pod, sharing only the store): it reads the production alias from the store, imports the model
and answers with that version.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import Project, copy_project, explain, serving, with_library

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Run in the project's environment: the production model's tag, rows the service accepts, and whether
# this process's BentoML store has the model (the replica's must not, before it starts).
PRODUCTION = with_library("""
import json
import bentoml
settings = internal("config").get_settings()
production = internal("registry.aliases").production_tag(settings)
frame = importlib.import_module(package + ".dataset").load_frame(settings)
columns = [c for c in frame.columns if c != settings.data.target_column]
rows = [{c: (None if v != v else v) for c, v in r.items()} for r in frame[columns].head(3).to_dict("records")]
print(json.dumps({"production": production, "rows": rows, "local": bool(bentoml.models.list(production))}))
""")


def test_a_replica_whose_bentoml_home_never_saw_the_training_serves_the_production_model(
    default_installed: Project, tmp_path, prefect_home, s3_server
):
    store = {
        **s3_server.environ,
        f"{default_installed.package.upper()}_STORAGE__URL": f"s3://{s3_server.bucket()}/team",
    }
    trainer = copy_project(default_installed, tmp_path / "trainer", prefect_home)
    trained = trainer.cli("train", "--n-trials", "3", **store)
    assert trained.returncode == 0, explain(trained)
    found = trainer.query(PRODUCTION, **store)
    assert found["local"]
    replica_home = tmp_path / "replica-bentoml"
    replica = {**store, "BENTOML_HOME": str(replica_home)}
    assert not trainer.query(PRODUCTION, **replica)["local"], "the replica's store already had the model"
    with serving(trainer, tmp_path / "replica.log", **replica) as base:
        response = httpx.post(f"{base}/predict", json={"rows": found["rows"]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == found["production"]
    name, version = found["production"].split(":")
    assert (replica_home / "models" / name / version).is_dir()  # imported once, then served from there
