"""Generated player events and an independent reference of their profiles.

The reference is plain Python over the distinct events, written from the contract, not
from the fold's code. Event times are either within the last 20 minutes or older than
two days, so the windows of ``tests/data/features_all.toml`` (1h, 1d) include or exclude
each event without depending on bucket edges.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import ROOT

FEATURES_ALL = ROOT / "tests" / "data" / "features_all.toml"


def generate(players: int, events: int, seed: int) -> list[dict[str, Any]]:
    """``events`` distinct events spread over ``players`` players."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(events):
        player = f"p{rng.randrange(players)}"
        recent = rng.random() < 0.6
        age = (
            timedelta(seconds=rng.randint(60, 1200))
            if recent
            else timedelta(days=rng.randint(2, 40))
        )
        ts = (now - age).replace(microsecond=rng.choice([0, 0, 500_000]))
        kind = rng.choice(
            ["purchase", "purchase", "session_start", "login", "level_complete", "other"]
        )
        event: dict[str, Any] = {
            "event_id": f"ev-{seed}-{i}",
            "player_id": player,
            "type": kind,
            "ts": ts.isoformat(),
        }
        if kind == "purchase":
            amount: int | float = rng.choice([rng.randint(1, 50), round(rng.uniform(0.1, 99.9), 2)])
            event["props"] = {"amount": amount, "item": {"sku": f"sku-{rng.randrange(8)}"}}
        elif kind == "level_complete":
            event["props"] = {"level": rng.randint(1, 60)}
        out.append(event)
    return out


def expected_profiles(events: list[dict[str, Any]], now: datetime) -> dict[str, dict[str, Any]]:
    """Feature values of every player, as of ``now``, from distinct events."""
    distinct = {e["event_id"]: e for e in events}.values()
    by_player: dict[str, list[dict[str, Any]]] = {}
    for e in distinct:
        by_player.setdefault(e["player_id"], []).append(e)
    return {player: _profile(evs, now) for player, evs in by_player.items()}


def _profile(events: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    def when(e: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(e["ts"])

    purchases = [e for e in events if e["type"] == "purchase"]
    amounts = [e["props"]["amount"] for e in purchases]
    all_int = all(isinstance(a, int) for a in amounts)
    total = math.fsum(amounts)
    levels = [e for e in events if e["type"] == "level_complete"]
    by_time = sorted(purchases, key=lambda e: (when(e), e["event_id"]))
    last_level = max(levels, key=lambda e: (when(e), e["event_id"])) if levels else None
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    recent_amounts = [e["props"]["amount"] for e in purchases if when(e) > hour_ago]
    recent_total = math.fsum(recent_amounts)
    skus = [e["props"]["item"]["sku"] for e in purchases]
    day_levels = sorted(float(e["props"]["level"]) for e in levels if when(e) > day_ago)
    newest_levels = sorted(levels, key=lambda e: (when(e), e["event_id"]), reverse=True)
    return {
        "purchases": len(purchases),
        "spend": (int(total) if all_int else total) if amounts else 0,
        "spend_min": min(amounts) if amounts else None,
        "spend_max": max(amounts) if amounts else None,
        "spend_avg": total / len(amounts) if amounts else None,
        "first_sku": by_time[0]["props"]["item"]["sku"] if by_time else None,
        "last_level": last_level["props"]["level"] if last_level else 0,
        "distinct_skus": len({e["props"]["item"]["sku"] for e in purchases}),
        "sessions_1d": sum(
            1 for e in events if e["type"] in ("session_start", "login") and when(e) > day_ago
        ),
        "spend_1h": (
            (int(recent_total) if all(isinstance(a, int) for a in recent_amounts) else recent_total)
            if recent_amounts
            else 0
        ),
        "skus_seen": len(set(skus)),
        "spend_median": _nearest_rank(sorted(float(a) for a in amounts), 0.5),
        "level_p90_1d": _nearest_rank(day_levels, 0.9),
        "top_skus": [
            [sku, n] for sku, n in sorted(Counter(skus).items(), key=lambda kv: (-kv[1], kv[0]))
        ][:3],
        "recent_levels": [e["props"]["level"] for e in newest_levels[:3]],
    }


def _nearest_rank(ordered: list[float], q: float) -> float | None:
    """The least value with a share of at least ``q`` of all values at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else None
