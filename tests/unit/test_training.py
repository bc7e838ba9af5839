"""Point-in-time training sets against the live fold, on a lake of tricky events.

The oracle is the fold itself (``app.domain.fold``), run in Python over each label's
events: the training set's generated SQL must give the profile the fold would give at
the label's time from the distinct events dated at or before it.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.analytics import training
from app.analytics.location import LakeLocation
from app.analytics.training import (
    TrainingSetError,
    build_training_set,
    training_sql,
)
from app.domain.aggregates import FOLDED
from app.domain.events import EventRecord
from app.domain.features import Agg, FeatureSet, parse_features
from app.domain.fold import PoisonEvent, ProfileState, evaluate, fold_event
from app.lake_layout import FIRST_RECEIVED
from app.streams.lake import write_events

pytestmark = pytest.mark.unit

FEATURES = parse_features(
    """
[features.purchases]
event = "purchase"
agg = "count"

[features.priced]
event = "purchase"
agg = "count"
field = "amount"

[features.spend]
event = "purchase"
agg = "sum"
field = "amount"

[features.spend_min]
event = "purchase"
agg = "min"
field = "amount"

[features.spend_max]
event = ["purchase", "refund"]
agg = "max"
field = "amount"

[features.spend_avg]
event = "purchase"
agg = "avg"
field = "amount"

[features.first_sku]
event = "purchase"
agg = "first"
field = "item.sku"

[features.last_sku]
event = "purchase"
agg = "last"
field = "item.sku"
default = "none"

[features.last_level]
event = "level_complete"
agg = "last"
field = "level"
default = 0

[features.distinct_skus]
event = "purchase"
agg = "distinct_count"
field = "item.sku"

[features.sessions_10m]
event = ["session_start", "login"]
agg = "count"
window = "10m"

[features.spend_1h]
event = "purchase"
agg = "sum"
field = "amount"
window = "1h"

[features.min_level]
event = "level_complete"
agg = "min"
field = "level"

[features.max_level_2h]
event = "level_complete"
agg = "max"
field = "level"
window = "2h"
default = -1

[features.logins_90s]
event = "login"
agg = "count"
window = "90s"

[features.skus_seen]
event = "purchase"
agg = "approx_distinct"
field = "item.sku"

[features.skus_seen_10m]
event = ["purchase", "refund"]
agg = "approx_distinct"
field = "item.sku"
window = "10m"

[features.distinct_skus_1h]
event = "purchase"
agg = "distinct_count"
field = "item.sku"
window = "1h"

[features.spend_p90]
event = "purchase"
agg = "percentile"
field = "amount"
q = 0.9

[features.level_median_2h]
event = "level_complete"
agg = "percentile"
field = "level"
q = 0.5
window = "2h"

[features.top_skus]
event = "purchase"
agg = "top_k"
field = "item.sku"
k = 3

[features.top_levels_1h]
event = "level_complete"
agg = "top_k"
field = "level"
k = 2
window = "1h"

[features.recent_skus]
event = ["purchase", "refund"]
agg = "last_k"
field = "item.sku"
k = 3

[features.recent_levels_10m]
event = "level_complete"
agg = "last_k"
field = "level"
k = 2
window = "10m"
"""
)

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z, in microseconds
AMOUNTS: list[Any] = [
    5,
    5.0,
    0.1,
    0.2,
    0.3,
    -0.5,
    12,
    2**53,
    1e300,
    None,  # null: does not contribute
    "5",  # poison for sum/min/max/avg
    True,  # poison: a bool is not a number
    2**53 + 1,  # poison: beyond 2**53
    2**64,  # poison
    1e301,  # poison
]
SKUS: list[Any] = [
    "a",
    "b",
    "1",
    1,
    1.0,
    {"x": 1, "y": [1, 2]},
    {"y": [1, 2], "x": 1},  # the same value as the one before, keys in another order
    [1, "a"],
    None,
    True,
    2**70,  # poison for first/last (an int beyond 64 bits); fine for distinct_count
    {"n": 2**70},  # the same, inside an object
    [1, [2**64]],  # and inside a list
    2**63,  # beyond int64, within uint64: poison for first/last too
]


def _props(rng: random.Random, kind: str) -> dict[str, Any] | None:
    if kind in ("purchase", "refund"):
        props: dict[str, Any] = {}
        if rng.random() < 0.9:
            props["amount"] = rng.choice(AMOUNTS)
        shape = rng.random()
        if shape < 0.8:
            props["item"] = {"sku": rng.choice(SKUS)} if rng.random() < 0.95 else {}
        elif shape < 0.9:
            props["item"] = rng.choice(["flat", ["sku"], 3])  # not an object: no sku
        return props
    if kind == "level_complete":
        return {"level": rng.choice([1, 1.0, 2, 3, 7, 7.5, 9, 9.0, 2**70, None, "x"])}
    return None if rng.random() < 0.5 else {"note": "hi"}


def generate(seed: int, players: int = 30, events: int = 700) -> list[EventRecord]:
    """Events over ~3 hours, with ts ties, resends (same or other content) and shared ids."""
    rng = random.Random(seed)
    out: list[EventRecord] = []
    kinds = ["purchase", "purchase", "refund", "login", "session_start", "level_complete", "x"]
    for i in range(events):
        player = f"p{rng.randrange(players)}"
        ts = T0 + rng.randrange(0, 3 * 3600) * 1_000_000 + rng.choice([0, 0, 1, 999_999])
        if out and rng.random() < 0.1:
            ts = out[-1].ts  # a tie on event time, broken by event_id
        kind = rng.choice(kinds)
        received = ts + rng.randrange(0, 5_000_000)
        record = EventRecord(
            game="g",
            event_id=f"e{i:04d}",
            player_id=player,
            type=kind,
            ts=ts,
            received_at=received,
            props=_props(rng, kind),
        )
        out.append(record)
        roll = rng.random()
        if roll < 0.08:  # the same event again, later
            out.append(_copy(record, received_at=received + rng.randrange(1, 10**7)))
        elif roll < 0.12:  # a resend with other content and time: the first received wins
            out.append(
                _copy(
                    record,
                    received_at=received + rng.randrange(1, 10**7),
                    ts=ts - rng.randrange(0, 4000) * 1_000_000,
                    props=_props(rng, kind),
                )
            )
        elif roll < 0.14:  # another player's event with the same id: both count
            out.append(_copy(record, player_id=f"p{rng.randrange(players)}"))
    out.append(  # another game's event for a label player never counts
        EventRecord("other", "x1", "p1", "purchase", T0, T0, {"amount": 1000})
    )
    return out


def _copy(record: EventRecord, **changes: Any) -> EventRecord:
    fields: dict[str, Any] = {
        "game": record.game,
        "event_id": record.event_id,
        "player_id": record.player_id,
        "type": record.type,
        "ts": record.ts,
        "received_at": record.received_at,
        "props": record.props,
    }
    fields.update(changes)
    return EventRecord(**fields)


def write_lake(lake: Path, events: list[EventRecord], files: int = 5) -> None:
    """Spread the events over several flushes, as the archive agent would."""
    for k in range(files):
        write_events(lake, events[k::files])


def expected(
    events: list[EventRecord],
    features: FeatureSet,
    player: str,
    ts: int,
    *,
    exclude_late: bool = False,
) -> dict[str, Any]:
    """The live fold's profile at ``ts`` over the player's distinct events dated <= ts."""
    firsts: dict[str, EventRecord] = {}
    for e in sorted(events, key=lambda e: e.received_at):
        if e.game == "g" and e.player_id == player:
            firsts.setdefault(e.event_id, e)
    state = ProfileState()
    for e in firsts.values():
        if e.ts > ts or (exclude_late and e.received_at > ts):
            continue
        with contextlib.suppress(PoisonEvent):
            fold_event(state, e, features)
    return evaluate(state, features, ts)


def same(got: Any, want: Any) -> bool:
    """Equal as JSON values (44 and 44.0 are one number; True is not 1)."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return got == want and not (isinstance(got, float) and math.isnan(got))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    return type(got) is type(want) and got == want


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Output rows, JSON columns decoded."""
    table = pq.read_table(path)
    rows: list[dict[str, Any]] = table.to_pylist()
    for field in table.schema:
        if getattr(field.type, "extension_name", None) == "arrow.json":
            for row in rows:
                if row[field.name] is not None:
                    row[field.name] = json.loads(row[field.name])
    return rows


def labels_for(events: list[EventRecord], seed: int) -> list[tuple[str, int]]:
    """Label times at, just before and just after events, on bucket edges, and far off."""
    rng = random.Random(seed)
    players = [*sorted({e.player_id for e in events if e.game == "g"}), "nobody"]
    out = []
    for player in players:
        theirs = [e.ts for e in events if e.player_id == player] or [T0]
        for _ in range(6):
            base = rng.choice(theirs)
            out.append((player, base + rng.choice([0, 0, -1, 1, 60_000_000, -600_000_000])))
        out.append((player, T0 - 1))  # before everything
        out.append((player, T0 + 10 * 3600 * 1_000_000))  # long after: windows empty
        edge = (rng.choice(theirs) // 600_000_000 + 1) * 600_000_000  # a bucket edge
        out.extend([(player, edge - 1), (player, edge)])
    return out


def _iso(ts_us: int) -> str:
    from app.domain.events import from_micros

    return from_micros(ts_us).isoformat()


@pytest.mark.parametrize(("seed", "two_processes"), [(1, False), (5, True), (9, False)])
def test_every_feature_equals_the_fold_as_of_each_label(
    tmp_path: Path, seed: int, two_processes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if two_processes:  # the folded features in two processes, split by player
        monkeypatch.setattr(training, "PARALLEL_FROM_EVENTS", 1)
    events = generate(seed=seed)
    write_lake(tmp_path / "lake", events)
    labels = labels_for(events, seed=seed + 1)
    table = pa.table(
        {
            "player_id": [p for p, _ in labels],
            "ts": [_iso(t) for _, t in labels],
            "churned": [i % 2 for i in range(len(labels))],
        }
    )
    pq.write_table(table, tmp_path / "labels.parquet")
    stats = build_training_set(
        LakeLocation(str(tmp_path / "lake")),
        FEATURES,
        "g",
        tmp_path / "labels.parquet",
        tmp_path / "out.parquet",
        chunk_rows=50,  # several chunks
    )
    assert stats.labels == len(labels)
    assert stats.poison > 0  # the data has poison events, and they were recognised
    rows = read_rows(tmp_path / "out.parquet")
    assert len(rows) == len(labels)
    mismatches = []
    for i, ((player, ts), row) in enumerate(zip(labels, rows, strict=True)):
        assert (row["player_id"], row["ts"], row["churned"]) == (player, _iso(ts), i % 2)
        want = expected(events, FEATURES, player, ts)
        for name, value in want.items():
            if not same(row[name], value):
                mismatches.append((player, _iso(ts), name, row[name], value))
    assert not mismatches, mismatches[:10]
    # Not a vacuous pass: the features do vary over the labels.
    for name in FEATURES.names:
        assert len({json.dumps(r[name], sort_keys=True) for r in rows}) > 1, name


def test_no_event_after_the_label_time_changes_its_row(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    events = generate(seed=3, players=5, events=200)
    write_lake(lake, events)
    labels = [(p, t) for p, t in labels_for(events, seed=4) if p != "nobody"]
    pq.write_table(
        pa.table({"player_id": [p for p, _ in labels], "ts": [_iso(t) for _, t in labels]}),
        tmp_path / "labels.parquet",
    )
    location = LakeLocation(str(lake))
    build_training_set(location, FEATURES, "g", tmp_path / "labels.parquet", tmp_path / "a.csv")
    before = (tmp_path / "a.csv").read_text()

    # For every player, right after its last label (1 µs: the same window bucket) and an
    # hour later: a purchase, a login, a level and a poison event, all received before it.
    last: dict[str, int] = {}
    for player, ts in labels:
        last[player] = max(ts, last.get(player, ts))
    later: list[EventRecord] = []
    for player, ts in last.items():
        for delay in (1, 3600 * 1_000_000):
            for kind, props in (
                ("purchase", {"amount": 1000, "item": {"sku": "leak"}}),
                ("login", None),
                ("level_complete", {"level": 99}),
                ("purchase", {"amount": "poison"}),
            ):
                later.append(
                    EventRecord("g", f"late-{len(later)}", player, kind, ts + delay, ts, props)
                )
    write_events(lake, later)
    build_training_set(location, FEATURES, "g", tmp_path / "labels.parquet", tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_text() == before

    # The same events at the label's own time do change the rows: the test can fail.
    at = [
        EventRecord("g", f"at-{player}", player, "purchase", ts, ts, {"amount": 1000})
        for player, ts in last.items()
    ]
    write_events(lake, at)
    build_training_set(location, FEATURES, "g", tmp_path / "labels.parquet", tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_text() != before


def test_late_arrivals_count_by_event_time_unless_excluded(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    ts = T0 + 3600 * 1_000_000
    events = [
        EventRecord("g", "on-time", "p", "purchase", ts - 10, ts - 5, {"amount": 2}),
        EventRecord("g", "late", "p", "purchase", ts - 10, ts + 50_000_000, {"amount": 3}),
    ]
    write_events(lake, events)
    (tmp_path / "labels.csv").write_text(f"player_id,ts\np,{_iso(ts)}\n")
    location = LakeLocation(str(lake))
    build_training_set(location, FEATURES, "g", tmp_path / "labels.csv", tmp_path / "all.parquet")
    build_training_set(
        location,
        FEATURES,
        "g",
        tmp_path / "labels.csv",
        tmp_path / "served.parquet",
        exclude_late_arrivals=True,
    )
    everything = read_rows(tmp_path / "all.parquet")[0]
    served = read_rows(tmp_path / "served.parquet")[0]
    assert (everything["purchases"], everything["spend"]) == (2, 5)
    assert (served["purchases"], served["spend"]) == (1, 2)
    assert same(everything["spend_avg"], expected(events, FEATURES, "p", ts)["spend_avg"])
    want = expected(events, FEATURES, "p", ts, exclude_late=True)
    assert all(same(served[k], v) for k, v in want.items())


def test_csv_labels_keep_their_columns_and_bad_labels_are_named(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_events(lake, [EventRecord("g", "e", "007", "login", T0, T0)])
    (tmp_path / "labels.csv").write_text(
        "player_id,ts,label,note\n007,2023-11-14T23:13:20+01:00,1,a b\n007,2023-11-14 22:13:19,0,\n"
    )
    location = LakeLocation(str(lake))
    build_training_set(location, FEATURES, "g", tmp_path / "labels.csv", tmp_path / "out.csv")
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["player_id", "ts", "label", "note"]
    # The player id stays text ("007"), the ts as written; the login counts only as of
    # 22:13:20 UTC (the first label, written with a +01:00 offset).
    header = lines[0].split(",")
    first = dict(zip(header, lines[1].split(","), strict=True))
    second = dict(zip(header, lines[2].split(","), strict=True))
    assert (first["player_id"], first["ts"], first["note"]) == (
        "007",
        "2023-11-14T23:13:20+01:00",
        "a b",
    )
    assert (first["sessions_10m"], first["logins_90s"]) == ("1", "1")
    assert (second["sessions_10m"], second["logins_90s"]) == ("0", "0")

    (tmp_path / "bad.csv").write_text("player_id,ts\np,yesterday\n")
    with pytest.raises(TrainingSetError, match="label row 1: ts 'yesterday'"):
        build_training_set(location, FEATURES, "g", tmp_path / "bad.csv", tmp_path / "x.csv")
    (tmp_path / "nots.csv").write_text("player_id,when\np,2024-01-01T00:00:00Z\n")
    with pytest.raises(TrainingSetError, match="no column ts"):
        build_training_set(location, FEATURES, "g", tmp_path / "nots.csv", tmp_path / "x.csv")
    (tmp_path / "clash.csv").write_text("player_id,ts,spend\np,2024-01-01T00:00:00Z,1\n")
    with pytest.raises(TrainingSetError, match="spend"):
        build_training_set(location, FEATURES, "g", tmp_path / "clash.csv", tmp_path / "x.csv")


def test_min_and_max_prefer_an_int_over_an_equal_float(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    levels = [1.0, 1, 9, 9.0, 2.5]
    write_events(
        lake,
        [
            EventRecord("g", f"e{n}", "p", "level_complete", T0 + n, T0 + n, {"level": level})
            for n, level in enumerate(levels)
        ],
    )
    (tmp_path / "labels.csv").write_text(f"player_id,ts\np,{_iso(T0 + 10)}\n")
    build_training_set(
        LakeLocation(str(lake)), FEATURES, "g", tmp_path / "labels.csv", tmp_path / "o.parquet"
    )
    row = read_rows(tmp_path / "o.parquet")[0]
    want = expected(
        [
            EventRecord("g", f"e{n}", "p", "level_complete", T0 + n, T0 + n, {"level": lv})
            for n, lv in enumerate(levels)
        ],
        FEATURES,
        "p",
        T0 + 10,
    )
    assert (want["min_level"], want["max_level_2h"]) == (1, 9)
    assert type(row["min_level"]) is int
    assert row["min_level"] == 1
    assert type(row["max_level_2h"]) is int
    assert row["max_level_2h"] == 9


def test_generated_sql_has_one_aggregate_per_feature_the_fold_does_not_compute() -> None:
    sql = training_sql(FEATURES)
    for spec in FEATURES.specs:
        assert (f'AS "{spec.name}"' in sql.features) is (spec.agg not in FOLDED), spec.name
    assert {spec.agg for spec in FEATURES.specs} == set(Agg)  # every aggregate is tested
    assert FIRST_RECEIVED in sql.events
    assert "pp_fsum" in sql.features
    assert "json_extract(props" in sql.events
    assert sql.widths == (1, 10, 60)


BIG = parse_features(
    """
[features.skus]
event = "purchase"
agg = "distinct_count"
field = "item.sku"

[features.skus_1h]
event = "purchase"
agg = "distinct_count"
field = "item.sku"
window = "1h"

[features.skus_seen]
event = "purchase"
agg = "approx_distinct"
field = "item.sku"

[features.spend_p90]
event = "purchase"
agg = "percentile"
field = "amount"
q = 0.9

[features.top_skus]
event = "purchase"
agg = "top_k"
field = "item.sku"
k = 5

[features.recent]
event = "purchase"
agg = "last_k"
field = "item.sku"
k = 4
"""
)


def test_sketches_past_their_exact_sizes_match_the_fold_or_stay_within_their_bounds(
    tmp_path: Path,
) -> None:
    rng = random.Random(4)
    n = 6_000
    events = [
        EventRecord(
            "g",
            f"e{i:05d}",
            "p",
            "purchase",
            T0 + rng.randrange(0, 2 * 3600) * 1_000_000,
            T0 + rng.randrange(0, 3 * 3600) * 1_000_000,
            {
                "amount": rng.randrange(10_000),
                "item": {"sku": rng.choice([f"s{int(rng.paretovariate(0.7))}", f"u{i}"])},
            },
        )
        for i in range(n)
    ]
    write_lake(tmp_path / "lake", events, files=2)
    times = [T0 + 3600 * 1_000_000, T0 + 2 * 3600 * 1_000_000]
    pq.write_table(
        pa.table({"player_id": ["p"] * len(times), "ts": [_iso(t) for t in times]}),
        tmp_path / "labels.parquet",
    )
    build_training_set(
        LakeLocation(str(tmp_path / "lake")),
        BIG,
        "g",
        tmp_path / "labels.parquet",
        tmp_path / "out.parquet",
    )
    for ts, row in zip(times, read_rows(tmp_path / "out.parquet"), strict=True):
        dated = [e for e in events if e.ts <= ts]
        want = expected(events, BIG, "p", ts)  # the live fold, in order of receipt
        assert isinstance(want["skus"], float)  # past the exact cap
        assert isinstance(want["skus_1h"], float)
        for name in ("skus", "skus_1h", "skus_seen", "recent"):  # order-independent
            assert same(row[name], want[name]), name
        skus = Counter(e.props["item"]["sku"] for e in dated if e.props)
        assert abs(row["skus_seen"] - len(skus)) <= 0.02 * len(skus)
        amounts = sorted(float(e.props["amount"]) for e in dated if e.props)
        below = bisect.bisect_left(amounts, row["spend_p90"]) / len(amounts)
        at_or_below = bisect.bisect_right(amounts, row["spend_p90"]) / len(amounts)
        assert below - 0.01 <= 0.9 <= at_or_below + 0.01
        for sku, count in row["top_skus"]:
            assert abs(count - skus[sku]) <= 3.5 / 256 * len(dated)
        assert row["top_skus"][0][0] == skus.most_common(1)[0][0]
