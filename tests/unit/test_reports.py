"""Each report against answers computed here in plain Python from the generated events."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.analytics.location import LakeLocation, connect_lake
from app.analytics.reports import ReportError, ReportRequest, run_report
from app.cli import main
from app.domain.events import EventRecord
from app.streams.lake import write_events

pytestmark = pytest.mark.unit

T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
DAY_US = 86_400 * 1_000_000
DAYS = 45
FIRST_DAY = date(2024, 1, 1)


def generate(seed: int) -> list[EventRecord]:
    """Players joining over time, active on some days, with copies and odd amounts."""
    rng = random.Random(seed)
    out: list[EventRecord] = []
    n = 0
    for p in range(90):
        joined = rng.randrange(DAYS)
        lifetime = rng.choice([1, 3, 8, 20, DAYS])  # many players churn
        for day in range(joined, min(DAYS, joined + lifetime)):
            if day != joined and rng.random() < 0.55:
                continue
            for _ in range(rng.randint(1, 4)):
                ts = T0 + day * DAY_US + rng.randrange(86_400) * 1_000_000
                kind = rng.choice(["install", "tutorial", "purchase", "login", "login"])
                props: dict[str, Any] | None = None
                if kind == "purchase":
                    props = {"amount": rng.choice([0.99, 4.99, 10, 2, "free", None, True])}
                    if rng.random() < 0.1:
                        props = {}
                record = EventRecord("g", f"e{n}", f"p{p}", kind, ts, ts + 1000, props)
                n += 1
                out.append(record)
                if rng.random() < 0.1:  # archived twice
                    out.append(record)
    out.append(EventRecord("other", "x", "p1", "purchase", T0, T0, {"amount": 1000}))
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[EventRecord]]:
    root = tmp_path_factory.mktemp("reports") / "lake"
    events = generate(seed=5)
    rng = random.Random(6)
    rng.shuffle(events)
    for start in range(0, len(events), 400):
        write_events(root, events[start : start + 400])
    return root, [e for e in events if e.game == "g"]


def day_of(ts_us: int) -> date:
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC).date()


def active_days(events: list[EventRecord]) -> dict[date, set[str]]:
    days: dict[date, set[str]] = defaultdict(set)
    for e in events:
        days[day_of(e.ts)].add(e.player_id)
    return days


def report(root: Path, name: str, **options: Any) -> list[dict[str, Any]]:
    conn = connect_lake(LakeLocation(str(root)))
    try:
        result = run_report(conn, ReportRequest(name, "g", **options))
    finally:
        conn.close()
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def every_day(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def test_dau_counts_players_active_each_day(lake: tuple[Path, list[EventRecord]]) -> None:
    root, events = lake
    active = active_days(events)
    rows = report(root, "dau")
    last = max(active)
    assert [r["day"] for r in rows] == every_day(FIRST_DAY, last)
    assert [r["players"] for r in rows] == [
        len(active.get(d, ())) for d in every_day(FIRST_DAY, last)
    ]
    window = report(root, "dau", start=date(2024, 1, 10), end=date(2024, 1, 12))
    assert [(r["day"], r["players"]) for r in window] == [
        (d, len(active[d])) for d in every_day(date(2024, 1, 10), date(2024, 1, 12))
    ]
    empty = report(root, "dau", start=date(2030, 1, 1), end=date(2030, 1, 2))
    assert [r["players"] for r in empty] == [0, 0]


def test_mau_counts_players_active_in_the_30_days_ending_each_day(
    lake: tuple[Path, list[EventRecord]],
) -> None:
    root, events = lake
    active = active_days(events)
    start, end = date(2024, 1, 20), date(2024, 2, 14)
    rows = report(root, "mau", start=start, end=end)
    want = []
    for d in every_day(start, end):
        players: set[str] = set()
        for back in range(30):
            players |= active.get(d - timedelta(days=back), set())
        want.append((d, len(players)))
    assert [(r["day"], r["players"]) for r in rows] == want
    assert len({n for _, n in want}) > 3  # the data does move


def test_retention_by_first_seen_cohort(lake: tuple[Path, list[EventRecord]]) -> None:
    root, events = lake
    active = active_days(events)
    first: dict[str, date] = {}
    for d in sorted(active):
        for p in active[d]:
            first.setdefault(p, d)
    last = max(active)
    rows = report(root, "retention")
    cohorts: dict[date, set[str]] = defaultdict(set)
    for p, d in first.items():
        cohorts[d].add(p)
    assert [r["cohort"] for r in rows] == sorted(cohorts)
    for row in rows:
        members = cohorts[row["cohort"]]
        assert row["players"] == len(members)
        for n in (1, 7, 30):
            day = row["cohort"] + timedelta(days=n)
            if day > last:
                assert row[f"day{n}"] is None
                assert row[f"day{n}_rate"] is None
            else:
                back = len(members & active.get(day, set()))
                assert row[f"day{n}"] == back
                assert row[f"day{n}_rate"] == pytest.approx(back / len(members), abs=5e-5)
    assert any(r["day30"] for r in rows)


def test_funnel_follows_steps_in_event_time_order(lake: tuple[Path, list[EventRecord]]) -> None:
    root, events = lake
    steps = ("install", "tutorial", "purchase", "purchase")
    start, end = date(2024, 1, 5), date(2024, 2, 5)
    rows = report(root, "funnel", steps=steps, start=start, end=end)
    by_player: dict[str, list[EventRecord]] = defaultdict(list)
    for e in {(e.player_id, e.event_id): e for e in events}.values():
        if start <= day_of(e.ts) <= end:
            by_player[e.player_id].append(e)
    reached = [0] * len(steps)
    for evs in by_player.values():
        evs.sort(key=lambda e: (e.ts, e.event_id))
        k = 0
        for e in evs:
            if k < len(steps) and e.type == steps[k]:
                reached[k] += 1
                k += 1
    assert [(r["step"], r["type"], r["players"]) for r in rows] == [
        (i + 1, s, reached[i]) for i, s in enumerate(steps)
    ]
    assert reached[0] > reached[-1] > 0
    assert rows[1]["from_previous"] == pytest.approx(reached[1] / reached[0], abs=5e-5)
    assert rows[3]["from_first"] == pytest.approx(reached[3] / reached[0], abs=5e-5)
    with pytest.raises(ReportError, match="--steps"):
        report(root, "funnel")


def test_arpdau_sums_each_purchase_once(lake: tuple[Path, list[EventRecord]]) -> None:
    root, events = lake
    active = active_days(events)
    revenue: dict[date, list[float]] = defaultdict(list)
    payers: dict[date, set[str]] = defaultdict(set)
    for e in {(e.player_id, e.event_id): e for e in events}.values():
        if e.type != "purchase":
            continue
        payers[day_of(e.ts)].add(e.player_id)
        amount = (e.props or {}).get("amount")
        if isinstance(amount, (int, float)) and not isinstance(amount, bool):
            revenue[day_of(e.ts)].append(amount)
    rows = report(root, "arpdau")
    assert len(rows) == (max(active) - FIRST_DAY).days + 1
    for row in rows:
        d = row["day"]
        assert row["players"] == len(active.get(d, ()))
        assert row["payers"] == len(payers.get(d, ()))
        total = math.fsum(revenue.get(d, []))
        assert row["revenue"] == pytest.approx(total, abs=1e-9)
        if row["players"]:
            assert row["arpdau"] == pytest.approx(total / row["players"], abs=1e-9)
    other = report(root, "arpdau", purchase_event="login", revenue_field="amount")
    assert all(r["revenue"] == 0 for r in other)
    assert any(r["purchases"] for r in other)


def test_report_command_prints_json_csv_and_a_plot(
    lake: tuple[Path, list[EventRecord]], tmp_path: Path
) -> None:
    root, events = lake
    data_dir = root.parent / "var"
    data_dir.mkdir(exist_ok=True)
    if not (data_dir / "lake").exists():
        (data_dir / "lake").symlink_to(root)
    env = {"PLAYERPULSE_DATA_DIR": str(data_dir), "PLAYERPULSE_LOG_FORMAT": "json"}
    runner = CliRunner()
    args = [
        "analytics",
        "report",
        "dau",
        "--game",
        "g",
        "--from",
        "2024-01-02",
        "--to",
        "2024-01-03",
    ]
    result = runner.invoke(main, [*args, "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    active = active_days(events)
    assert json.loads(result.stdout) == [
        {"day": "2024-01-02", "players": len(active[date(2024, 1, 2)])},
        {"day": "2024-01-03", "players": len(active[date(2024, 1, 3)])},
    ]
    result = runner.invoke(main, [*args, "--format", "csv"], env=env)
    assert result.stdout.splitlines()[0] == "day,players"
    bad = runner.invoke(main, ["analytics", "report", "funnel", "--game", "g"], env=env)
    assert bad.exit_code != 0
    assert "--steps" in bad.output

    pytest.importorskip("matplotlib")
    png = tmp_path / "dau.png"
    result = runner.invoke(main, [*args, "--plot", str(png)], env=env)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
