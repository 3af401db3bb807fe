"""Look at the Prefect UI the way a person would: Debian's Chromium, driven by Playwright.

`capture_prefect_ui` opens the UI that `prefect server start` serves, finds a flow run on the Runs page and
an artifact by its key, saves a full-page screenshot of the artifact and returns what it saw;
`capture_artifact_pictures` opens artifacts by key and checks that the browser really shows their picture.
Nothing is downloaded: Playwright drives /usr/bin/chromium (`apt-get install chromium`), never a browser of
its own.

Prefect 3.9 serves two UIs: `/` leads to the new one under `/v2` (`/v2/runs`, `/v2/runs/flow-run/<id>`,
`/v2/artifacts/key/<key>`, `/v2/artifacts/artifact/<id>`), the older one keeps the same routes without the
prefix. The helper follows where `/` leads, so it works with either.

A trap it checks first: the UI calls the API at the URL the server's `/ui-settings` names, which is
http://127.0.0.1:4200/api unless the server was started with PREFECT_SERVER_API_HOST and
PREFECT_SERVER_API_PORT (or PREFECT_UI_API_URL) set; `--port` alone leaves every page empty with
"Can't connect to Server API".
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
STATES = (
    "Completed",
    "Failed",
    "Crashed",
    "Cancelled",
    "Cancelling",
    "Running",
    "Pending",
    "Scheduled",
    "Paused",
)


class PrefectUIError(AssertionError):
    """Something expected is not in the UI; the message says what the page showed instead."""


def capture_prefect_ui(
    ui_url: str,
    *,
    flow_run_name_contains: str,
    artifact_key: str,
    screenshot: Path,
    timeout: float = 60.0,
) -> dict:
    """Find the flow run whose name contains `flow_run_name_contains` and the artifact `artifact_key` in the
    Prefect UI at `ui_url` (e.g. http://127.0.0.1:4200); save a full-page screenshot of the artifact.

    Returns {"ui": {"url", "prefix"}, "flow_run": {"name", "url", "state", "text"},
    "artifact": {"key", "url", "key_url", "flow_run", "text"}, "screenshot"}; raises PrefectUIError with
    the page's URL, title, text and console errors when something is missing.
    """
    base = ui_url.rstrip("/")
    with browser_page(base) as (page, prefix, errors):
        run = find_flow_run(page, base + prefix, flow_run_name_contains, timeout, errors)
        artifact = find_artifact(page, base + prefix, artifact_key, timeout, errors)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    return {
        "ui": {"url": base, "prefix": prefix},
        "flow_run": run,
        "artifact": artifact,
        "screenshot": str(screenshot),
    }


@contextlib.contextmanager
def browser_page(base: str, width: int = 1440, height: int = 900) -> Iterator[tuple[Any, str, list[str]]]:
    """A page in headless Chromium on the UI at `base`, whose API answers: (page, the UI's route prefix,
    the console errors seen so far)."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text[:300]) if msg.type == "error" else None)
            check_api(page, base)
            page.goto(base + "/", wait_until="domcontentloaded")
            yield page, "/v2" if urlsplit(page.url).path.startswith("/v2") else "", errors
        finally:
            browser.close()


def capture_artifact_pictures(
    ui_url: str, keys: list[str], output: Path, timeout: float = 60.0
) -> dict[str, dict]:
    """Open the newest artifact of each key in the Prefect UI at `ui_url` and check that it shows a picture
    as a person sees it: an <img> in the artifact that the browser loaded and decoded (naturalWidth > 0; a
    broken image, a link the browser may not open or a URL it cannot reach, has 0). Keeps a screenshot of
    each artifact's page in `output`/<key>.png.

    Returns {key: {"url", "images": [{"src", "width", "height", "shown"}], "screenshot"}}; raises
    PrefectUIError naming the key, what each image did and what the page showed, when one is missing or
    broken."""
    base = ui_url.rstrip("/")
    found: dict[str, dict] = {}
    output.mkdir(parents=True, exist_ok=True)
    with browser_page(base, width=1280, height=1000) as (page, prefix, errors):
        for key in keys:
            artifact = find_artifact(page, base + prefix, key, timeout, errors)
            images = artifact_images(page, timeout)
            screenshot = output / f"{key}.png"
            page.screenshot(path=str(screenshot), full_page=True)
            if not images or not all(image["shown"] for image in images):
                raise PrefectUIError(
                    f"the {key!r} artifact at {artifact['url']} shows no picture: images {images}\n"
                    f"{describe(page, errors)}"
                )
            found[key] = {"url": artifact["url"], "images": images, "screenshot": screenshot}
    return found


# The pictures an artifact shows: inline in a markdown artifact, or an image artifact's (alt artifact-image).
ARTIFACT_IMAGES = "[data-testid='markdown-display'] img, img[alt='artifact-image']"


def artifact_images(page, timeout: float) -> list[dict]:
    """The artifact's <img> elements once the browser has finished with each (loaded or failed): their
    source (cut short: a data: URI is long), natural size, and whether they are shown (decoded, naturalWidth
    > 0). The UI renders markdown lazily, after the page is idle: waited for, up to `timeout`; none by then
    is an empty list."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(
            """selector => {
                const images = [...document.querySelectorAll(selector)];
                return images.length > 0 && images.every(i => i.complete);
            }""",
            arg=ARTIFACT_IMAGES,
            timeout=timeout * 1000,
        )
    return page.evaluate(
        """selector => [...document.querySelectorAll(selector)].map(i => ({
            src: i.currentSrc.slice(0, 100), width: i.naturalWidth, height: i.naturalHeight,
            shown: i.complete && i.naturalWidth > 0}))""",
        ARTIFACT_IMAGES,
    )


def check_api(page, base: str) -> None:
    """The API the UI will call must answer, or every page shows "Can't connect to Server API"."""
    settings = page.request.get(base + "/ui-settings")
    if not settings.ok:
        raise PrefectUIError(f"{base}/ui-settings answered {settings.status}: is this a Prefect server's UI?")
    api_url = settings.json().get("api_url", "")
    from playwright.sync_api import Error as PlaywrightError

    try:
        healthy = page.request.get(api_url.rstrip("/") + "/health", timeout=5000).ok
    except PlaywrightError:  # a refused connection
        healthy = False
    if not healthy:
        raise PrefectUIError(
            f"the UI at {base} calls the API at {api_url!r}, which does not answer; start the server with "
            "PREFECT_SERVER_API_HOST and PREFECT_SERVER_API_PORT set to its host and port (or "
            "PREFECT_UI_API_URL to its API URL): `--port` alone leaves the UI pointing at port 4200"
        )


def find_flow_run(page, root: str, name: str, timeout: float, errors: list[str]) -> dict:
    """The Runs page lists the run (reloaded until it does); its own page is opened to read its state."""
    link = page.locator('a[href*="/runs/flow-run/"]', has_text=name).first
    wait_for_link(page, f"{root}/runs", link, timeout, f"no flow run whose name contains {name!r}", errors)
    run_name = link.inner_text().strip()
    link.click()
    page.wait_for_url(re.compile(r".*/runs/flow-run/[0-9a-f-]+.*"), timeout=timeout * 1000)
    # The page's title names the run once the run's own page has rendered (its links show it sooner).
    page.wait_for_function("name => document.title.includes(name)", arg=run_name, timeout=timeout * 1000)
    page.wait_for_load_state("networkidle", timeout=timeout * 1000)
    text = page.locator("body").inner_text()
    return {
        "name": run_name,
        "url": page.url,
        "state": first_state(text[text.find(run_name) :]),
        "text": text[:4000],
    }


def first_state(text: str) -> str | None:
    """The state word nearest the start of `text`: the run page shows its state right after its name."""
    found = [(m.start(), m.group()) for m in re.finditer(rf"\b({'|'.join(STATES)})\b", text)]
    return min(found)[1] if found else None


def find_artifact(page, root: str, key: str, timeout: float, errors: list[str]) -> dict:
    """The key's page lists its versions; the newest is opened, where the artifact itself is shown."""
    key_url = f"{root}/artifacts/key/{key}"
    link = page.locator('a[href*="/artifacts/artifact/"]').first
    wait_for_link(page, key_url, link, timeout, f"no artifact with key {key!r}", errors)
    link.click()
    page.wait_for_url(re.compile(r".*/artifacts/artifact/[0-9a-f-]+.*"), timeout=timeout * 1000)
    page.wait_for_load_state("networkidle", timeout=timeout * 1000)
    run_link = page.locator('a[href*="/runs/flow-run/"]').first  # the run that created it
    flow_run = run_link.inner_text().strip() if run_link.count() else None
    return {
        "key": key,
        "url": page.url,
        "key_url": key_url,
        "flow_run": flow_run,
        "text": page.locator("body").inner_text()[:8000],
    }


def wait_for_link(page, url: str, link, timeout: float, missing: str, errors: list[str]) -> None:
    """Open `url` and wait for `link`, reloading every few seconds (the UI lists what existed when it
    loaded); raise with what the page showed when it never appears."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url, wait_until="domcontentloaded")
    waited = 0.0
    while True:
        step = min(10.0, max(timeout - waited, 0.1))
        try:
            link.wait_for(state="visible", timeout=step * 1000)
            return
        except PlaywrightTimeout:
            waited += step
            if waited >= timeout:
                shown = describe(page, errors)
                raise PrefectUIError(f"{missing} at {url} after {timeout:.0f} s\n{shown}") from None
            page.reload(wait_until="domcontentloaded")


def describe(page, errors: list[str]) -> str:
    """What the page showed: where it is, its title, its text and the browser's console errors."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        text = page.locator("body").inner_text(timeout=5000)
    except PlaywrightError as exc:  # a page that cannot be read is itself the finding
        text = f"(cannot read the page: {exc})"
    text = re.sub(r"\n\s*\n+", "\n", text).strip()
    shown = f"page {page.url} titled {page.title()!r} shows:\n{text[:3000]}"
    if errors:
        shown += "\nconsole errors:\n" + "\n".join(errors[-10:])
    return shown
