"""The pictures in the runs' artifacts, on the suite's Prefect server: train and monitor show theirs, each a
markdown artifact with the PNG inline and its stored copy under reports/ in the store; a picture that fails to
draw or to be stored is a warning, never a failed run. (What a browser shows of them:
tests/test_monitoring_e2e.py.)"""

import base64
import logging
import os
import re
import subprocess
import sys
from uuid import UUID

import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.flows.monitor import ROLLOUT_ARTIFACT_KEY, monitor
from ml_lifecycle._internal.flows.train import train
from ml_lifecycle._internal.registry import aliases
from ml_lifecycle._internal.reports import pictures
from ml_lifecycle._internal.storage import REPORTS, open_storage
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from ..conftest import PACKAGE, clear_alias, make_frame, register

pytestmark = pytest.mark.usefixtures("prefect_server")
INLINE = re.compile(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def latest(key: str) -> str | None:
    """The newest artifact with `key`, as the UI shows it (None when there is none)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(found[0].data) if found else None


def inline_png(markdown: str) -> bytes:
    match = INLINE.search(markdown)
    assert match, markdown[:300]
    png = base64.b64decode(match.group(1))
    assert png.startswith(pictures.PNG_MAGIC)
    return png


def stored_pictures(key: str) -> dict[str, bytes]:
    store = open_storage(get_settings())
    return {
        listed.key: store.read_bytes(listed.key)
        for listed in store.list(REPORTS)
        if listed.key.rsplit("/", 1)[-1].startswith(f"{key}-") and listed.key.endswith(".png")
    }


@pytest.fixture
def folder_store(csv_settings, monkeypatch, tmp_path):
    monkeypatch.setenv(f"{PACKAGE.upper()}_STORAGE__URL", str(tmp_path / "store"))
    get_settings.cache_clear()
    return tmp_path / "store"


def test_train_and_monitor_show_their_pictures_inline_with_the_stored_copy_linked(
    folder_store, tmp_path, task_type
):
    tag = train(n_trials=3, reason="test")
    shifted = tmp_path / "shifted.csv"
    batch = make_frame(task_type, rows=200, seed=9).drop(columns=["label"])
    batch.assign(size=batch["size"] + 5).to_csv(shifted, index=False)
    monitor(current_path=str(shifted))
    titles = {
        pictures.TUNING_HISTORY: ("# Tuning history\n", "study `"),
        pictures.PARAMETER_IMPORTANCES: ("# Parameter importances\n", "study `"),
        pictures.HOLDOUT_CURVE: ("# Holdout curve\n", f"`{tag}` on the holdout rows"),
        pictures.DRIFT_PER_COLUMN: ("# Drift per column\n", f"{shifted} (200 rows) against the "),
    }
    for key, (title, caption) in titles.items():
        markdown = latest(key)
        assert markdown is not None and markdown.startswith(title), (key, (markdown or "")[:200])
        assert caption in markdown, (key, markdown[-500:])
        (stored, data), *more = stored_pictures(key).items()
        assert not more
        assert inline_png(markdown) == data
        assert markdown.endswith(f"]({(folder_store / stored).as_uri()})"), markdown[-300:]


def test_the_rollout_watch_leads_its_artifact_with_the_before_after_picture(
    folder_store, tmp_path, task_type
):
    settings = get_settings()
    clear_alias(settings)
    previous, live = register(settings, task_type), register(settings, task_type, depth=3)
    for tag in (previous, live):
        aliases.change(settings, lambda record, tag=tag: record.history.append(aliases.entry(tag, "test")))
    batch = tmp_path / "batch.csv"
    make_frame(task_type, rows=200, seed=9).drop(columns=["label"]).to_csv(batch, index=False)
    verdict = monitor(current_path=str(batch))
    assert verdict["rollout"]["live"] == live
    markdown = latest(ROLLOUT_ARTIFACT_KEY)
    assert markdown.startswith(f"# Watch after rollout: {verdict['rollout']['state']}\n\n![")
    assert inline_png(markdown) == next(iter(stored_pictures(ROLLOUT_ARTIFACT_KEY).values()))
    assert f"Live model `{live}`" in markdown and "| performance |" in markdown  # the watch's text follows
    clear_alias(settings)


@flow
def shows(key: str, draw_fails: bool) -> UUID | None:
    def draw() -> bytes:
        if draw_fails:
            raise RuntimeError("no fonts on this machine")
        return pictures.drift_per_column([], 0.0, 0.3)

    return pictures.show_picture(get_settings(), key, "A picture", draw)


def test_a_picture_that_fails_to_draw_is_a_warning_and_no_artifact(folder_store, caplog):
    with caplog.at_level(logging.WARNING):
        assert shows("picture-that-fails", draw_fails=True) is None
    assert "The picture-that-fails picture could not be drawn: RuntimeError: no fonts" in caplog.text
    assert latest("picture-that-fails") is None
    assert stored_pictures("picture-that-fails") == {}


def test_a_store_that_refuses_the_picture_still_shows_it_inline(folder_store, caplog):
    folder_store.mkdir(parents=True, exist_ok=True)
    (folder_store / REPORTS).write_text("a file where the reports folder goes: every write fails")
    with caplog.at_level(logging.WARNING):
        assert shows("picture-not-stored", draw_fails=False) is not None
    assert "The picture-not-stored picture was not stored" in caplog.text
    markdown = latest("picture-not-stored")
    assert inline_png(markdown) and "Stored:" not in markdown


def test_drawing_keeps_matplotlibs_cache_in_the_projects_state_folder_not_the_home(tmp_path):
    """matplotlib would write its font cache to ~/.cache/matplotlib on first import; a project keeps it in
    its .state like Prefect's and BentoML's files."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    (project / "settings.toml").write_text((get_settings().root / "settings.toml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(f"{PACKAGE.upper()}_")}
    env.pop("MPLCONFIGDIR", None)
    env.update({"HOME": str(home), f"{PACKAGE.upper()}_SETTINGS_FILE": str(project / "settings.toml")})
    script = (
        f"import os, {PACKAGE}, ml_lifecycle\n"
        "from ml_lifecycle._internal.reports import pictures\n"
        "draw = lambda: pictures.drift_per_column([], 0, 0.5)\n"
        "pictures.show_picture(ml_lifecycle.get_settings(), 'x', 'x', draw)\n"
        "print(os.environ['MPLCONFIGDIR'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == str(project / ".state" / "matplotlib")
    assert list(home.rglob("*")) == [], list(home.rglob("*"))
