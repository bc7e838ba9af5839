"""Webhook URLs (SSRF refusal), event types, delivery bodies and backoff."""

from __future__ import annotations

import pytest

from app.domain.webhooks import (
    WebhookError,
    backoff_s,
    check_addresses,
    check_events,
    delivery_body,
    url_host,
)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "scheme must be http or https"),
        ("file:///etc/passwd", "scheme must be http or https"),
        ("http:///path", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_urls_that_are_not_plain_http_are_refused(url: str, problem: str) -> None:
    with pytest.raises(WebhookError, match=problem):
        url_host(url)


def test_the_host_of_an_http_url() -> None:
    assert url_host("https://hooks.example.com:8443/a?b=1") == "hooks.example.com"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.5", "private"),
        ("169.254.169.254", "link-local"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not a public"),
    ],
)
def test_private_addresses_are_refused(address: str, kind: str) -> None:
    with pytest.raises(WebhookError, match=kind):
        check_addresses("h", [address])


def test_public_addresses_pass_and_a_host_must_resolve() -> None:
    check_addresses("h", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
    with pytest.raises(WebhookError, match="does not resolve"):
        check_addresses("h", [])
    with pytest.raises(WebhookError, match="private"):
        check_addresses("h", ["93.184.216.34", "10.0.0.1"])  # any private one refuses


def test_event_types() -> None:
    assert check_events(["segment.left", "segment.left"]) == ["segment.left"]
    with pytest.raises(WebhookError, match="events"):
        check_events(["segment.moved"])
    with pytest.raises(WebhookError, match="events"):
        check_events([])


def test_the_delivery_body_and_backoff() -> None:
    body = delivery_body(7, "g", "p", "whales", "entered", "2026-12-08T00:00:00Z", {"x": 1})
    assert body == {
        "id": 7,
        "type": "segment.entered",
        "timestamp": "2026-12-08T00:00:00Z",
        "data": {
            "game": "g",
            "player_id": "p",
            "segment": "whales",
            "at": "2026-12-08T00:00:00Z",
            "features": {"x": 1},
        },
    }
    assert [backoff_s(n, 0.5) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_s(20, 0.5) == 60.0
