"""The monitor's Evidently report is stored under reports/ in the store (storage.url), and the run's
`drift-report` artifact links it with a URL that opens it for whoever reads the Prefect UI: a signed URL on
object storage (moto's S3 server here), a file:// link or monitoring.reports_url on a folder store."""

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

import httpx
import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.flows.monitor import monitor
from ml_lifecycle._internal.flows.train import train
from ml_lifecycle._internal.storage import REPORTS, StorageError, open_storage
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

from ..conftest import PACKAGE, latest_drift_artifact, make_frame

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def shifted(tmp_path, task_type) -> str:
    """A batch that drifts (two columns moved), so the run writes a full report."""
    batch = make_frame(task_type, rows=200, seed=9).drop(columns=["label"])
    path = tmp_path / "shifted.csv"
    batch.assign(size=batch["size"] + 5, weight=batch["weight"] * 5).to_csv(path, index=False)
    return str(path)


def stored_reports() -> list[str]:
    """The Evidently reports under reports/ (the runs' pictures are stored beside them)."""
    return [
        listed.key for listed in open_storage(get_settings()).list(REPORTS) if listed.key.endswith(".html")
    ]


def test_on_object_storage_the_artifact_links_a_signed_url_that_opens_the_report(
    csv_settings, s3_environ, monkeypatch, shifted
):
    bucket = s3_environ.bucket("reports")
    monkeypatch.setenv(f"{PACKAGE.upper()}_STORAGE__URL", f"s3://{bucket}/team")
    get_settings.cache_clear()
    train(n_trials=3, reason="test")
    verdict = monitor(current_path=shifted)
    (key,) = stored_reports()
    assert key.startswith(f"{REPORTS}/date=") and key.endswith(".html")
    assert verdict["report"] == f"s3://{bucket}/team/{key}"
    link = verdict["report_url"]
    assert (
        link.startswith(f"{s3_environ.endpoint}/{bucket}/team/{quote(key)}?") and "X-Amz-Signature=" in link
    )
    assert f"]({link})" in latest_drift_artifact()
    # Opened as a browser would: no credentials but the signature in the URL, served as a page.
    opened = httpx.get(link, timeout=30)
    assert opened.status_code == 200, opened.text[:300]
    assert opened.headers["content-type"].startswith("text/html")
    assert opened.content == open_storage(get_settings()).read_bytes(key)
    assert "</html>" in opened.text.lower() and '"size"' in opened.text  # a drifted column's section
    unsigned = httpx.get(link.split("?")[0], timeout=30)
    assert unsigned.status_code == 403, "the report is reachable without the signature"


def test_on_a_folder_store_the_artifact_links_the_file_or_where_reports_are_served(
    csv_settings, monkeypatch, tmp_path, shifted
):
    monkeypatch.setenv(f"{PACKAGE.upper()}_STORAGE__URL", str(tmp_path / "store"))
    get_settings.cache_clear()
    train(n_trials=3, reason="test")
    first = monitor(current_path=shifted)
    (key,) = stored_reports()
    report = Path(url2pathname(urlparse(first["report_url"]).path))
    assert first["report_url"].startswith("file://") and report == tmp_path / "store" / key
    assert "</html>" in report.read_text().lower()
    monkeypatch.setenv(f"{PACKAGE.upper()}_MONITORING__REPORTS_URL", "https://reports.example.com/ml/")
    get_settings.cache_clear()
    second = monitor(current_path=shifted)
    (newer,) = set(stored_reports()) - {key}  # a second report beside the first, never over it
    assert second["report_url"] == f"https://reports.example.com/ml/{newer.removeprefix(REPORTS + '/')}"
    assert f"]({second['report_url']})" in latest_drift_artifact()


def test_a_store_that_refuses_the_report_fails_the_run_last_after_the_event(
    csv_settings, monkeypatch, tmp_path, shifted
):
    """The retrain event is out before the report, and the alert and gauges still go after it: the run
    then fails with the store's one line, and the artifact says the report was not stored."""
    store = tmp_path / "store"
    store.mkdir()
    (store / REPORTS).write_text("a file where the reports folder goes: every report write fails")
    monkeypatch.setenv(f"{PACKAGE.upper()}_STORAGE__URL", str(store))
    get_settings.cache_clear()
    train(n_trials=3, reason="test")
    since = datetime.now(UTC)
    with pytest.raises(
        StorageError, match=rf"^the drift report was not stored: storage.url = '{store.as_uri()}'"
    ):
        monitor(current_path=shifted)
    assert f"Full report: not stored: storage.url = '{store.as_uri()}'" in latest_drift_artifact()
    with get_client(sync_client=True) as client:
        drift_name = EventNameFilter(name=[get_settings().drift_event])
        page = client.read_events(
            filter=EventFilter(event=drift_name, occurred=EventOccurredFilter(since=since)), limit=50
        )
    assert len(page.events) == 1, "the drift event went out before the report"


def test_a_settings_file_that_still_names_reports_dir_is_told_where_reports_went(tmp_path):
    """2.0's reports_dir is gone: the line says reports are in the store, not a near miss (reports_url)."""
    from ml_lifecycle._internal.config import unknown_keys

    path = tmp_path / "settings.toml"
    path.write_text('[monitoring]\nreports_dir = "reports"\n')
    variable = f"{PACKAGE.upper()}_MONITORING__REPORTS_DIR"
    problems = unknown_keys(path, {variable: "/tmp/reports"})
    assert problems == [
        f"monitoring.reports_dir in {path}: no longer a setting: drift reports are stored under reports/ in "
        "storage.url; delete this line",
        f"{variable} (environment variable): no longer a setting: drift reports are stored under reports/ in "
        "storage.url; delete this line",
    ]
