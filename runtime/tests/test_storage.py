"""The shared store (storage.py) on both backends a team meets: a local folder and an S3-compatible server
(moto on 127.0.0.1). What the loop relies on: create-only writes, compare-and-swap that refuses a stale
version, listing under a prefix, links a browser opens, and one clear line when the store cannot be used."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from ml_lifecycle._internal.config import SettingsError, get_settings
from ml_lifecycle._internal.storage import Storage, StorageError, _explain, open_storage, storage_url


@pytest.fixture(params=["folder", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "folder":
        return Storage((tmp_path / "store").as_uri())
    server = request.getfixturevalue("s3_environ")
    return Storage(f"s3://{server.bucket()}/team/project")


def test_a_create_only_write_never_replaces_an_object(storage):
    assert storage.create("models/m/v1.bentomodel", b"first")
    assert not storage.create("models/m/v1.bentomodel", b"second")
    assert storage.read_bytes("models/m/v1.bentomodel") == b"first"


def test_a_swap_against_a_stale_version_is_refused_and_a_current_one_wins(storage):
    assert storage.swap("aliases/m.json", b"1", None)
    first = storage.read("aliases/m.json")
    assert storage.swap("aliases/m.json", b"2", first.version)
    assert not storage.swap("aliases/m.json", b"3", first.version)  # someone else wrote "2" since
    assert not storage.swap("aliases/m.json", b"4", None)  # it exists: creating is refused too
    assert storage.read_bytes("aliases/m.json") == b"2"


def test_a_missing_object_reads_as_none_and_lists_nothing(storage):
    assert storage.read("aliases/none.json") is None
    assert storage.list("requests") == []
    assert not storage.download("reports/none.html", Path("/nonexistent/x"))


def test_listing_returns_the_objects_under_a_folder_in_key_order(storage):
    for key in ("requests/date=2026-12-06/hour=10/b.jsonl", "requests/date=2026-12-06/hour=09/a.jsonl"):
        storage.write(key, b"{}\n")
    storage.write("requestsX/other", b"")  # a sibling whose name starts the same is not inside the folder
    keys = [listed.key for listed in storage.list("requests")]
    assert keys == ["requests/date=2026-12-06/hour=09/a.jsonl", "requests/date=2026-12-06/hour=10/b.jsonl"]
    assert all(listed.size == 3 for listed in storage.list("requests"))


def test_a_link_opens_the_object_in_a_browser(storage):
    storage.write("reports/run-1.html", b"<html>drift</html>")
    link = storage.link("reports/run-1.html")
    if link.startswith("file://"):
        assert Path(link.removeprefix("file://")).read_bytes() == b"<html>drift</html>"
    else:
        assert httpx.get(link, timeout=10).content == b"<html>drift</html>"


APPEND = """
import json, sys
from ml_lifecycle._internal.storage import Storage
store, writer = Storage(sys.argv[1]), int(sys.argv[2])
def add(data, n):
    return json.dumps([*json.loads(data or b"[]"), [writer, n]]).encode()
for n in range(int(sys.argv[3])):
    store.update("aliases/m.json", lambda data: add(data, n))
"""


def test_processes_racing_on_a_folder_lose_no_update(tmp_path):
    """The folder backend's compare-and-swap is written by hand (a lock beside the object): four processes
    appending at once must each see the others' entries."""
    url = (tmp_path / "store").as_uri()
    writers = [subprocess.Popen([sys.executable, "-c", APPEND, url, str(w), "25"]) for w in range(4)]
    assert [process.wait(timeout=120) for process in writers] == [0, 0, 0, 0]
    entries = json.loads(Storage(url).read_bytes("aliases/m.json"))
    assert sorted(map(tuple, entries)) == [(w, n) for w in range(4) for n in range(25)]


def test_an_update_retries_when_another_writer_got_there_first(storage):
    storage.write("aliases/m.json", b"[]")
    interfered = []

    def change(data: bytes | None) -> bytes:
        if not interfered:  # another machine writes between this read and this write, once
            interfered.append(True)
            storage.write("aliases/m.json", b'["other"]')
        return json.dumps([*json.loads(data), "mine"]).encode()

    assert storage.update("aliases/m.json", change)
    assert json.loads(storage.read_bytes("aliases/m.json")) == ["other", "mine"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_endpoint_that_does_not_answer_is_one_line_naming_the_setting(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(StorageError) as error:
        Storage("s3://bucket/prefix", timeout_seconds=3).read("aliases/m.json")
    message = str(error.value)
    assert "storage.url = 's3://bucket/prefix'" in message and "AWS_ENDPOINT_URL" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        # obstore's connect error names the time it took: its digits once read as a 403 (a flaky hint)
        (
            "Error performing GET http://127.0.0.1:1/b/k in 278.425403ms, after 2 retries - HTTP error: "
            "error sending request (tcp connect error, Connection refused)",
            "AWS_ENDPOINT_URL",
        ),
        (
            "Error performing GET http://127.0.0.1:1/b/k in 12.5ms - Server returned non-2xx status code: "
            "403 Forbidden: <Code>SignatureDoesNotMatch</Code>",
            "AWS_ACCESS_KEY_ID",
        ),
        (
            "Error performing GET http://127.0.0.1:1/b/k in 12.5ms - Server returned non-2xx status code: "
            "403 Forbidden",
            "AWS_ACCESS_KEY_ID",
        ),
    ],
)
def test_the_hint_follows_the_cause_not_digits_elsewhere_in_the_error(error, hint):
    message = _explain("s3://bucket/prefix", "aliases/m.json", RuntimeError(error))
    assert hint in message and "storage.url = 's3://bucket/prefix'" in message


def test_a_missing_bucket_is_one_line_naming_the_setting(s3_environ):
    with pytest.raises(StorageError, match=r"storage.url = 's3://no-such-bucket/p'.*bucket does not exist"):
        Storage("s3://no-such-bucket/p").write("aliases/m.json", b"{}")


def test_the_default_store_is_a_folder_in_the_project(monkeypatch):
    monkeypatch.delenv("MY_ML_PROJECT_STORAGE__URL")
    get_settings.cache_clear()
    settings = get_settings()
    assert storage_url(settings) == (settings.root / ".state" / "store").resolve().as_uri()
    assert open_storage(settings).is_local


def test_a_store_url_of_an_unknown_kind_names_the_setting(monkeypatch):
    monkeypatch.setenv("MY_ML_PROJECT_STORAGE__URL", "ftp://host/x")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"storage\.url.*ftp:// is not a store"):
        get_settings()
