"""The dashboard in Debian's Chromium, driven by Playwright (no browser download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Page, Route, sync_playwright

from tests.support import ROOT

CHROMIUM = os.environ.get("PLAYERPULSE_TEST_CHROMIUM") or shutil.which("chromium") or ""
ARTIFACTS = Path(os.environ.get("PLAYERPULSE_TEST_ARTIFACTS") or ROOT / "test-artifacts")


@contextmanager
def offline(url: str) -> Iterator[tuple[Page, list[str]]]:
    """A page opened at ``url`` where every request to a host other than 127.0.0.1 fails
    (as on a machine without internet), and the list of every URL the page requests."""
    assert CHROMIUM, "no Chromium: install Debian's package (apt-get install chromium)"
    requests: list[str] = []

    def only_local(route: Route) -> None:
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            route.continue_()
        else:
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.on("request", lambda request: requests.append(request.url))
            page.route("**/*", only_local)
            page.goto(url)
            yield page, requests
        finally:
            browser.close()


@contextmanager
def dashboard(url: str, key: str | None = None) -> Iterator[tuple[Page, list[str]]]:
    """The dashboard page at ``url`` (given ``key``, already submitted), offline, and the
    list of every URL the page requests."""
    with offline(f"{url}/dashboard") as (page, requests):
        if key is not None:
            page.fill("#key", key)
            page.click("#key-form button")
            page.wait_for_selector("#board", state="visible")
        yield page, requests


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot kept as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
