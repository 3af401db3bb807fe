"""Look at the Prefect UI the way a person would: Debian's Chromium, driven by Playwright.

`capture_prefect_ui` opens the UI that `prefect server start` serves, finds a flow run on the Runs page and
an artifact by its key, saves a full-page screenshot of the artifact and returns what it saw. Nothing is
downloaded: Playwright drives /usr/bin/chromium (`apt-get install chromium`), never a browser of its own.

Prefect 3.9 serves two UIs: `/` leads to the new one under `/v2` (`/v2/runs`, `/v2/runs/flow-run/<id>`,
`/v2/artifacts/key/<key>`, `/v2/artifacts/artifact/<id>`), the older one keeps the same routes without the
prefix. The helper follows where `/` leads, so it works with either.

A trap it checks first: the UI calls the API at the URL the server's `/ui-settings` names, which is
http://127.0.0.1:4200/api unless the server was started with PREFECT_SERVER_API_HOST and
PREFECT_SERVER_API_PORT (or PREFECT_UI_API_URL) set; `--port` alone leaves every page empty with
"Can't connect to Server API".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
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
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    base = ui_url.rstrip("/")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text[:300]) if msg.type == "error" else None)
            check_api(page, base)
            page.goto(base + "/", wait_until="domcontentloaded")
            prefix = "/v2" if urlsplit(page.url).path.startswith("/v2") else ""
            run = find_flow_run(page, base + prefix, flow_run_name_contains, timeout, errors)
            artifact = find_artifact(page, base + prefix, artifact_key, timeout, errors)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {
        "ui": {"url": base, "prefix": prefix},
        "flow_run": run,
        "artifact": artifact,
        "screenshot": str(screenshot),
    }


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
