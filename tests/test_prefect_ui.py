"""prefect_ui.capture_prefect_ui against a real `prefect server start`, in Debian's Chromium.

The generator's environment has no Prefect, so an installed default project's environment starts the
server (SQLite in a home of its own, 127.0.0.1, a free port) and runs a tiny flow that writes a markdown
artifact with a key; then the helper finds both in the UI. The screenshot is kept in tests/output/
(ignored by git) to look at after the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    Project,
    copy_project,
    explain,
    free_port,
    prefect_server,
    require_tool,
)
from prefect_ui import PrefectUIError, capture_artifact_pictures, capture_prefect_ui

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

OUTPUT = Path(__file__).parent / "output"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLOW = """
import sys
from prefect import flow
from prefect.artifacts import create_markdown_artifact

@flow(name="ui-check")
def ui_check(key: str, marker: str) -> None:
    create_markdown_artifact(key=key, markdown=f"# UI check\\n\\nmarker **{marker}**", description="ui check")

ui_check.with_options(flow_run_name=sys.argv[1])(key=sys.argv[2], marker=sys.argv[3])
"""
# One picture, as the library draws it, in each form a run could show it (docs/decisions.md, "Pictures in
# the Prefect UI"): inline in markdown (what reports/pictures.py makes), and as a file:// link to a copy in a
# folder store, in markdown and in an image artifact.
PICTURE_FORMS = """
import base64, sys
from pathlib import Path
from prefect import flow
from prefect.artifacts import create_image_artifact, create_markdown_artifact
import {package}  # binds the library
from ml_lifecycle._internal.reports import pictures

png = pictures.drift_per_column([], 0.0, 0.3)
stored = Path(sys.argv[2]) / "picture.png"
stored.parent.mkdir(parents=True, exist_ok=True)
stored.write_bytes(png)

@flow(name="picture-forms")
def forms(prefix: str) -> None:
    create_markdown_artifact(key=f"{{prefix}}-inline", markdown=pictures.markdown("inline", png))
    create_markdown_artifact(key=f"{{prefix}}-file-link", markdown=f"![file link]({{stored.as_uri()}})")
    create_image_artifact(key=f"{{prefix}}-file-image", image_url=stored.as_uri())

forms(sys.argv[1])
"""


@dataclass(frozen=True)
class Server:
    project: Project
    ui_url: str
    run_name: str
    key: str
    marker: str


@pytest.fixture(scope="module")
def project(default_installed, tmp_path_factory, prefect_home) -> Project:
    require_tool("chromium")
    return copy_project(default_installed, tmp_path_factory.mktemp("prefect-ui"), prefect_home)


@pytest.fixture(scope="module")
def server(project, tmp_path_factory) -> Iterator[Server]:
    with prefect_server(project, tmp_path_factory.mktemp("prefect-ui-server")) as ui_url:
        suffix = uuid.uuid4().hex[:8]
        run_name, key, marker = f"ui-check-{suffix}", f"ui-check-{suffix}", f"drift-{suffix}"
        script = ("uv", "run", "python", "-c", FLOW, run_name, key, marker)
        ran = project.run(*script, PREFECT_API_URL=f"{ui_url}/api", timeout=300)
        assert ran.returncode == 0, explain(ran)
        yield Server(project, ui_url, run_name, key, marker)


def test_finds_the_run_and_the_artifact_and_keeps_a_screenshot(server):
    screenshot = OUTPUT / "prefect-ui.png"
    screenshot.unlink(missing_ok=True)
    found = capture_prefect_ui(
        server.ui_url, flow_run_name_contains=server.run_name, artifact_key=server.key, screenshot=screenshot
    )
    print(f"\nPrefect UI screenshot: {screenshot}")
    assert found["flow_run"]["name"] == server.run_name, found["flow_run"]
    assert "/runs/flow-run/" in found["flow_run"]["url"]
    assert found["flow_run"]["state"] == "Completed", found["flow_run"]["text"]
    assert "/artifacts/artifact/" in found["artifact"]["url"]
    assert server.marker in found["artifact"]["text"], found["artifact"]["text"]
    assert found["artifact"]["flow_run"] == server.run_name
    data = screenshot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000, f"a {len(data)}-byte screenshot is too small to show a page"


def test_a_missing_artifact_fails_with_what_the_page_showed(server, tmp_path):
    with pytest.raises(PrefectUIError, match="no artifact with key 'no-such-key'") as failure:
        capture_prefect_ui(
            server.ui_url,
            flow_run_name_contains=server.run_name,
            artifact_key="no-such-key",
            screenshot=tmp_path / "never.png",
            timeout=15,
        )
    assert "shows:" in str(failure.value)
    assert not (tmp_path / "never.png").exists()


def test_a_ui_whose_api_does_not_answer_is_named_as_the_cause(project, tmp_path):
    # What `--port` alone does (the UI calls port 4200); a port nobody listens on, in case 4200 is taken here.
    dead_api = f"http://127.0.0.1:{free_port()}/api"
    with (
        prefect_server(project, tmp_path, PREFECT_UI_API_URL=dead_api) as ui_url,
        pytest.raises(PrefectUIError, match="PREFECT_SERVER_API_PORT") as failure,
    ):
        capture_prefect_ui(
            ui_url,
            flow_run_name_contains="anything",
            artifact_key="anything",
            screenshot=tmp_path / "never.png",
        )
    assert dead_api in str(failure.value)


def test_a_picture_inline_is_shown_and_a_file_link_to_it_is_not(server, tmp_path):
    """Why the pictures are inline (data: URIs in markdown): the UI is a web page, which Chromium does not
    let open file:// URLs, so a link to a folder store's copy is a broken image, in markdown or an image
    artifact alike."""
    prefix = f"picture-{uuid.uuid4().hex[:8]}"
    script = PICTURE_FORMS.format(package=server.project.package)
    ran = server.project.run(
        "uv", "run", "python", "-c", script, prefix, str(tmp_path / "store"),
        PREFECT_API_URL=f"{server.ui_url}/api", timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, explain(ran)
    seen = capture_artifact_pictures(server.ui_url, [f"{prefix}-inline"], OUTPUT / "picture-forms")
    (image,) = seen[f"{prefix}-inline"]["images"]
    assert image["shown"] and image["width"] == 800, image
    for form in ("file-link", "file-image"):
        with pytest.raises(PrefectUIError, match="shows no picture") as broken:
            capture_artifact_pictures(
                server.ui_url, [f"{prefix}-{form}"], OUTPUT / "picture-forms", timeout=30
            )
        assert "'width': 0" in str(broken.value), str(broken.value)[:500]
