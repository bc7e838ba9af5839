"""Webhooks: which URLs may receive a game's segment transitions, and what they receive.

A URL must be http(s) and, unless private addresses are allowed, every address its host
resolves to must be public (no private, loopback, link-local, multicast, reserved or
unspecified address): a webhook must not make the service reach into its own network
(SSRF). Resolving the host is the caller's I/O; the judgement is here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

EVENT_TYPES = ("segment.entered", "segment.left")
"""What a webhook can subscribe to."""


class WebhookError(ValueError):
    """A webhook cannot be created; the message names the field and the problem."""


def url_host(url: str) -> str:
    """The host of an http(s) URL; :class:`WebhookError` for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of range
    except ValueError as exc:
        raise WebhookError(f"url: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookError(f"url: the scheme must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise WebhookError("url: no host")
    if parts.username or parts.password:
        raise WebhookError("url: credentials in the URL are not accepted")
    del port
    return parts.hostname


def refused_address(address: str) -> str | None:
    """Why this IP address may not receive webhooks, or None if it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{address} is not a public address"
    return None


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Refuse a host that resolves to nothing, or to any non-public address."""
    found = list(addresses)
    if not found:
        raise WebhookError(f"url: the host {host!r} does not resolve")
    for address in found:
        reason = refused_address(address)
        if reason is not None:
            raise WebhookError(
                f"url: {host!r} resolves to {reason}; private, loopback and link-local "
                "receivers need PLAYERPULSE_WEBHOOK_ALLOW_PRIVATE"
            )


def check_events(events: Iterable[str]) -> list[str]:
    """The subscribed event types, checked and without repeats."""
    chosen = list(dict.fromkeys(events))
    unknown = [e for e in chosen if e not in EVENT_TYPES]
    if unknown or not chosen:
        raise WebhookError(f"events: each must be one of {list(EVENT_TYPES)}, got {chosen}")
    return chosen


def delivery_body(
    change_id: int,
    game: str,
    player_id: str,
    segment: str,
    kind: str,
    at: str,
    features: dict[str, Any],
) -> dict[str, Any]:
    """A transition as delivered (webhook body, SSE data, topic record)."""
    return {
        "id": change_id,
        "type": f"segment.{kind}",
        "timestamp": at,
        "data": {
            "game": game,
            "player_id": player_id,
            "segment": segment,
            "at": at,
            "features": features,
        },
    }


def backoff_s(attempt: int, first_s: float, cap_s: float = 60.0) -> float:
    """The wait before retry ``attempt`` (1, 2, ...): doubling from ``first_s``, capped."""
    return float(min(cap_s, first_s * 2 ** (attempt - 1)))
