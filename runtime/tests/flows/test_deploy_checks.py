"""The check `prefect deploy` runs first on a docker or kubernetes pool (prefect.yaml's build step):
a folder store is refused with one line naming storage.url; object storage passes.
tests/test_environments.py runs it through `prefect deploy` itself."""

import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.flows.deploy_checks import LocalStorageOnContainerPool
from ml_lifecycle.flows import require_shared_storage

from ..conftest import PACKAGE


@pytest.mark.parametrize("pool_type", ["docker", "kubernetes"])
def test_a_folder_store_is_refused_on_a_container_pool(pool_type, tmp_path, monkeypatch):
    monkeypatch.setenv(f"{PACKAGE.upper()}_STORAGE__URL", str(tmp_path / "store"))
    get_settings.cache_clear()
    with pytest.raises(LocalStorageOnContainerPool) as refused:
        require_shared_storage(pool_type)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(
        f"storage.url = '{(tmp_path / 'store').as_uri()}' is a folder"
    )
    assert f"{pool_type} pool" in line and f"{PACKAGE.upper()}_STORAGE__URL" in line and "s3://" in line
    with pytest.raises(LocalStorageOnContainerPool, match=r"storage.url = '\.state/store' is a folder"):
        require_shared_storage(pool_type, storage_url_override=".state/store")


def test_object_storage_passes_and_a_process_pool_may_keep_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(f"{PACKAGE.upper()}_STORAGE__URL", str(tmp_path / "store"))
    get_settings.cache_clear()
    assert require_shared_storage("process") == {"storage_url": (tmp_path / "store").as_uri()}
    url = "s3://team-ml/churn"
    assert require_shared_storage("kubernetes", storage_url_override=url) == {"storage_url": url}
    monkeypatch.setenv(f"{PACKAGE.upper()}_STORAGE__URL", "gs://team-ml/churn")
    get_settings.cache_clear()
    assert require_shared_storage("docker") == {"storage_url": "gs://team-ml/churn"}
