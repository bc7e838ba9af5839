"""The dashboard in a real headless browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Page

from tests.browser import dashboard, offline, screenshot
from tests.support import ServeProcess, unique
from tests.traffic import purchase, upload_example_model


def _traffic(server: ServeProcess, ingest: str, read: str, stop: threading.Event) -> None:
    """Purchases from 50 players and predictions for them, until ``stop``."""
    players = [f"p{i}" for i in range(50)]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while not stop.is_set():
            events = [purchase(player, 4.99) for player in players]
            sent = client.post("/v1/events", json={"events": events}, headers=_auth(ingest))
            assert sent.status_code == 202, sent.text
            assert sent.json()["accepted"] == len(events), sent.text
            for player in players[:10]:
                client.get(f"/v1/players/{player}/predictions/offers", headers=_auth(read))
            stop.wait(0.1)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _number(page: Page, element: str) -> float:
    text = page.inner_text(f"#{element}").replace(",", "").split(" ")[0]
    return float(text) if text not in ("", "-") else 0.0


def _wait_for_live_numbers(page: Page) -> None:
    """Rates over the last poll interval, a prediction row, freshness, all 6 charts, with
    at least 8 polls of history."""
    page.wait_for_function(
        """() => {
          const n = (id) => parseFloat(
            document.getElementById(id).textContent.replace(/,/g, "")) || 0;
          const rows = document.querySelectorAll('#models tbody tr');
          return Number(document.body.dataset.polls || 0) >= 8  // 14 s of series
            && n('tile-ingest-rate') > 0 && n('tile-fold-rate') > 0
            && n('tile-predictions') > 0 && rows.length === 1
            && document.getElementById('tile-freshness').textContent !== '-'
            && document.querySelectorAll('.charts canvas').length === 6;
        }""",
        timeout=90_000,
        polling=500,
    )


def test_dashboard_shows_live_numbers_offline(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path).start()
    stop = threading.Event()
    sender: threading.Thread | None = None
    try:
        game = unique("game")
        ingest, read, admin = (server.key(game, role) for role in ("ingest", "read", "admin"))
        with server.client(admin) as client:
            upload_example_model(client)

        with dashboard(server.url) as (page, requests):
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            assert page.is_visible("#key-form")
            assert not page.is_visible("#board")

            page.fill("#key", "pp_not-a-key")
            page.click("#key-form button")
            page.wait_for_function("document.getElementById('key-error').textContent !== ''")
            assert "key refused (401)" in page.inner_text("#key-error")
            unauthorized = "the server responded with a status of 401 (Unauthorized)"
            assert errors, "the refused data calls show in the console"
            assert all(unauthorized in error for error in errors), errors
            errors.clear()

            page.fill("#key", read)
            page.click("#key-form button")
            page.wait_for_selector("#board", state="visible")
            sender = threading.Thread(target=_traffic, args=(server, ingest, read, stop))
            sender.start()
            # Live numbers: rates over the last poll interval, and charts drawn.
            try:
                _wait_for_live_numbers(page)
            except Exception as exc:
                screenshot(page, "dashboard-failed.png")
                tiles = page.inner_text("main")
                raise AssertionError(f"no live numbers; errors {errors}; page: {tiles}") from exc
            # A read key sees everything but the admin reports, and is told so.
            forbidden = "the server responded with a status of 403 (Forbidden)"
            assert all(forbidden in error for error in errors), errors
            assert "need an admin key" in page.inner_text("#reports-note")
            screenshot(page, "dashboard.png")
            row = [cell.inner_text() for cell in page.query_selector_all("#models tbody td")]
            accepted = _number(page, "tile-accepted")
        stop.set()
        sender.join(timeout=60)

        assert row[:2] == ["offers", "1"], row
        assert float(row[5].replace(",", "")) > 0, row
        assert accepted >= 50
        # Every request the page made went to this server, on 127.0.0.1.
        hosts = {urlsplit(url).netloc for url in requests if not url.startswith("data:")}
        assert hosts == {f"127.0.0.1:{server.port}"}, hosts
        assert any(url.endswith("/dashboard/assets/uplot/uPlot.iife.min.js") for url in requests)

        with server.client(read) as client:
            data: dict[str, Any] = client.get("/v1/dashboard").json()
        assert set(data["event_hops"]) == {
            "device_to_received",
            "received_to_acked",
            "appended_to_folded",
            "received_to_folded",
            "device_to_folded",
        }
        assert all(hop["count"] >= 50 for hop in data["event_hops"].values()), data
        assert data["counters"]["events_accepted"] >= accepted
        assert sorted(data["lag"], key=int) == [str(p) for p in range(8)]
        assert {(m["model"], m["version"]) for m in data["models"]} == {("offers", "1")}
        with server.client() as client:
            assert client.get("/v1/dashboard").status_code == 401
    finally:
        stop.set()
        if sender is not None:
            sender.join(timeout=60)
        server.stop()


def test_api_docs_render_offline(serve: ServeProcess) -> None:
    """Swagger UI and ReDoc show every operation with nothing loaded from elsewhere."""
    with serve.client() as client:
        paths = client.get("/schema/openapi.json").json()["paths"]
    summaries = [op["summary"] for item in paths.values() for op in item.values()]
    with offline(f"{serve.url}/schema/swagger") as (page, requests):
        page.wait_for_selector(".opblock-summary", timeout=60_000)
        rendered = page.locator(".opblock-summary-description").all_inner_texts()
        assert sorted(rendered) == sorted(summaries)
        screenshot(page, "docs-swagger.png")
    assert all(urlsplit(url).hostname == "127.0.0.1" for url in requests), requests
    assert any(url.endswith("/docs/assets/swagger-ui/swagger-ui-bundle.js") for url in requests)

    with offline(f"{serve.url}/schema/redoc") as (page, requests):
        page.wait_for_function(
            "document.body.innerText.includes('Send a batch of events')", timeout=60_000
        )
        text = page.inner_text("body")
        assert all(summary in text for summary in summaries), text[:2000]
        screenshot(page, "docs-redoc.png")
    local = [url for url in requests if not url.startswith(("data:", "blob:"))]
    # ReDoc's bundle shows its maker's logo from their CDN, hidden when it fails to load
    # (as here): the only request that would leave the machine, and nothing depends on it.
    remote = {url for url in local if urlsplit(url).hostname != "127.0.0.1"}
    assert remote <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, requests
    assert any(url.endswith("/docs/assets/redoc/redoc.standalone.js") for url in requests)
