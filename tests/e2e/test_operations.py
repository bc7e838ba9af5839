"""Operations against one real `playerpulse serve` (two workers, HTTPS, CORS origins set):
key lifecycle from the command line and the admin API, the audit trail and its
verification, CORS preflights, TLS."""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
import trustme

from app.domain.privacy import player_key
from app.embedded.postgres import EmbeddedPostgres
from app.settings import DEFAULT_FEATURES
from tests import onnx_models as m
from tests.support import ServeProcess, unique, wait_for

pytestmark = pytest.mark.e2e

ALLOWED = "https://play.example.com"


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """HTTPS with a throwaway CA's certificate, two workers, one allowed browser origin."""
    workdir = tmp_path_factory.mktemp("ops")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(workdir / "cert.pem")
    cert.private_key_pem.write_to_path(workdir / "key.pem")
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    shutil.copyfile(DEFAULT_FEATURES, workdir / "features.toml")  # edited by the upgrade test
    process = ServeProcess(
        workdir,
        {
            "PLAYERPULSE_WORKERS": "2",
            "PLAYERPULSE_CORS_ORIGINS": ALLOWED,
            "PLAYERPULSE_FEATURES": str(workdir / "features.toml"),
        },
        serve_args=["--tls-cert", str(workdir / "cert.pem"), "--tls-key", str(workdir / "key.pem")],
        tls_ca=trust,
    ).start()
    yield process
    assert process.stop() == 0, process.log()


def fresh(server: ServeProcess, key: str) -> httpx.Client:
    """A client opening a new connection per request: the kernel hands each to a worker."""
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        verify=server.verify,
        timeout=10,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def event(player: str = "p1") -> dict[str, object]:
    return {
        "events": [
            {
                "event_id": unique("e"),
                "player_id": player,
                "type": "login",
                "ts": datetime.now(UTC).isoformat(),
            }
        ]
    }


def answers(client: httpx.Client, n: int = 12) -> set[int]:
    return {client.post("/v1/events", json=event()).status_code for _ in range(n)}


def test_https_only_and_both_workers_answer(ops: ServeProcess) -> None:
    assert ops.url.startswith("https://")
    with pytest.raises(httpx.ConnectError):  # an unknown CA is refused
        httpx.get(f"{ops.url}/health", timeout=5)
    with fresh(ops, "") as client:
        workers = set()

        def both() -> bool:
            workers.add(client.get("/health").json()["worker"])
            return len(workers) >= 2

        wait_for(both, timeout=30, interval=0)


def test_keys_from_the_command_line(ops: ServeProcess) -> None:
    game = unique("cli")
    out = ops.cli(
        "keys",
        "create",
        "--game",
        game,
        "--role",
        "ingest",
        "--name",
        "web 1.0",
        "--expires",
        "10s",
    ).stdout
    key = out.strip()
    key_id = key.split("_")[1]
    with fresh(ops, key) as client:
        assert answers(client) == {202}
        rows = json.loads(ops.cli("keys", "list", "--game", game, "--format", "json").stdout)
        assert [(r["id"], r["role"], r["name"], r["revoked"]) for r in rows] == [
            (key_id, "ingest", "web 1.0", None)
        ]
        assert key not in json.dumps(rows)  # never the secret
        assert rows[0]["expires"] is not None
        wait_for(lambda: answers(client, 4) == {401}, timeout=20)  # expired

    long_lived = ops.key(game, "ingest")
    old_id = long_lived.split("_")[1]
    rotated = ops.cli("keys", "rotate", old_id, "--overlap", "10s")
    new = rotated.stdout.strip()
    assert f"{old_id} keeps working until" in rotated.stderr
    with fresh(ops, long_lived) as old_client, fresh(ops, new) as new_client:
        assert answers(old_client, 4) == {202}  # within the overlap
        assert answers(new_client, 4) == {202}
        wait_for(lambda: answers(old_client, 4) == {401}, timeout=20)
        assert answers(new_client) == {202}
    revoked = ops.cli("keys", "revoke", new.split("_")[1]).stdout
    assert revoked.startswith(f"revoked {new.split('_')[1]} ({game}, ingest)")
    missing = ops.cli("keys", "revoke", "000000000000", check=False)
    assert missing.returncode == 1
    assert "no key with id '000000000000'" in missing.stderr


def test_a_key_revoked_through_the_api_is_refused_by_every_worker_within_a_second(
    ops: ServeProcess,
) -> None:
    game = unique("api")
    admin = ops.key(game, "admin")
    with ops.client(admin) as api:
        created = api.post("/v1/admin/keys", json={"role": "ingest", "name": "android"})
        assert created.status_code == 201, created.text
        key, info = created.json()["key"], created.json()["info"]
        assert (info["game"], info["role"], info["name"]) == (game, "ingest", "android")
        with fresh(ops, key) as client:
            assert answers(client, 20) == {202}  # now cached by both workers
            assert api.delete(f"/v1/admin/keys/{info['id']}").status_code == 200
            revoked_at = time.monotonic()
            wait_for(lambda: answers(client, 8) == {401}, timeout=1, interval=0)
            took = time.monotonic() - revoked_at
            assert answers(client, 20) == {401}
        assert took < 1.0
        listed = {k["id"]: k for k in api.get("/v1/admin/keys").json()["keys"]}
        assert listed[info["id"]]["revoked"] is not None
        assert listed[info["id"]]["last_used"] is not None


def test_rotation_through_the_api(ops: ServeProcess) -> None:
    game = unique("rot")
    admin = ops.key(game, "admin")
    with ops.client(admin) as api:
        old = api.post("/v1/admin/keys", json={"role": "read"}).json()
        reply = api.post(f"/v1/admin/keys/{old['info']['id']}/rotate", json={"overlap": "6s"})
        assert reply.status_code == 201, reply.text
        body = reply.json()
        assert body["old"]["replaced_by"] == body["info"]["id"]
        with fresh(ops, old["key"]) as client, fresh(ops, body["key"]) as new:
            assert client.get("/v1/players/nobody").status_code == 404  # works: no such player
            wait_for(lambda: client.get("/v1/players/nobody").status_code == 401, timeout=15)
            assert new.get("/v1/players/nobody").status_code == 404
        bad = api.post(f"/v1/admin/keys/{old['info']['id']}/rotate", json={"overlap": "soon"})
        assert bad.status_code == 400
        assert [d["key"] for d in bad.json()["detail"]] == ["overlap"]


def test_an_admin_key_cannot_see_or_touch_another_games_keys_or_audit(ops: ServeProcess) -> None:
    mine, theirs = unique("mine"), unique("theirs")
    their_key = ops.key(theirs, "ingest")
    their_id = their_key.split("_")[1]
    with ops.client(ops.key(theirs, "admin")) as api:
        assert api.put("/v1/admin/cors", json={"origins": ["https://theirs.example"]}).is_success
    with ops.client(ops.key(mine, "admin")) as api:
        assert {k["game"] for k in api.get("/v1/admin/keys").json()["keys"]} == {mine}
        assert api.delete(f"/v1/admin/keys/{their_id}").status_code == 404
        assert api.post(f"/v1/admin/keys/{their_id}/rotate", json={}).status_code == 404
        records = api.get("/v1/admin/audit").json()["records"]
        assert records
        assert {r["game"] for r in records} == {mine}
    with ops.client(their_key) as theirs_client:
        assert theirs_client.get("/v1/admin/keys").status_code == 403  # an ingest key
        assert theirs_client.post("/v1/events", json=event()).status_code == 202  # untouched


def test_each_admin_action_leaves_its_audit_record(ops: ServeProcess) -> None:
    game = unique("audit")
    admin = ops.key(game, "admin")
    admin_id = admin.split("_")[1]
    with ops.client(admin) as api:
        made = api.post("/v1/admin/keys", json={"role": "read"}, headers={"X-Request-Id": "req-1"})
        new_id = made.json()["info"]["id"]
        assert made.headers["x-request-id"] == "req-1"
        api.post(f"/v1/admin/keys/{new_id}/rotate", json={"overlap": "0"})
        api.delete(f"/v1/admin/keys/{new_id}")
        api.put("/v1/admin/cors", json={"origins": ["https://audit.example"]})
        api.delete("/v1/admin/players/p-gone")
        api.put("/v1/admin/models/none/outcome", json={"event": "x", "within": "1d"})  # 404
        records = api.get("/v1/admin/audit").json()["records"]
    ops.cli("keys", "revoke", admin_id)
    shown = [(r["actor"], r["action"], r["target"], r["outcome"]) for r in records]
    assert shown[0][1:] == ("keys.create", f"key:{admin_id}", "ok")
    assert shown[0][0].startswith("os:")
    assert shown[1] == (f"key:{admin_id}", "POST /v1/admin/keys", f"key:{new_id}", "ok")
    assert records[1]["request_id"] == "req-1"
    assert shown[2][1] == "POST /v1/admin/keys/{key_id}/rotate"
    assert shown[2][2].startswith(f"key:{new_id} -> key:")
    assert shown[3] == (
        f"key:{admin_id}",
        "DELETE /v1/admin/keys/{key_id}",
        f"key:{new_id}",
        "ok",
    )
    assert shown[4] == (f"key:{admin_id}", "PUT /v1/admin/cors", "cors:https://audit.example", "ok")
    # A player is named by the pseudonym an erasure keeps, never by the id.
    assert shown[5][1:] == (
        "DELETE /v1/admin/players/{player_id}",
        f"/v1/admin/players/player-sha256:{player_key(game, 'p-gone')}",
        "ok",
    )
    assert shown[6][1:] == (
        "PUT /v1/admin/models/{name}/outcome",
        "/v1/admin/models/none/outcome",
        "404",
    )
    assert len(shown) == 7
    listed = json.loads(ops.cli("audit", "list", "--game", game, "--format", "json").stdout)
    assert listed[-1]["action"] == "keys.revoke"
    assert listed[-1]["target"] == f"key:{admin_id}"
    assert "audit chain intact" in ops.cli("audit", "verify").stdout

    # Someone edits a record in PostgreSQL: verify names it, and exits 1.
    altered = records[3]["seq"]
    url = EmbeddedPostgres(Path(ops.env["PLAYERPULSE_DATA_DIR"])).running_url()
    assert url is not None

    async def tamper() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE audit_log SET outcome = 'ok' WHERE seq = $1", altered - 1)
            await conn.execute("UPDATE audit_log SET target = 'key:x' WHERE seq = $1", altered)
        finally:
            await conn.close()

    import asyncio

    asyncio.run(tamper())
    verify = ops.cli("audit", "verify", check=False)
    assert verify.returncode == 1
    assert f"audit chain broken at record {altered}" in verify.stderr


def test_cors_preflights_and_headers(ops: ServeProcess) -> None:
    game = unique("cors")
    ingest = ops.key(game, "ingest")
    read = ops.key(game, "read")
    preflight = {
        "Origin": ALLOWED,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    with ops.client() as anonymous:
        for path in ("/v1/events", "/v1/track"):
            answer = anonymous.options(path, headers=preflight)
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == ALLOWED
            assert "POST" in answer.headers["access-control-allow-methods"]
            assert "authorization" in answer.headers["access-control-allow-headers"]
        admin_preflight = anonymous.options("/v1/admin/keys", headers=preflight)
        assert "access-control-allow-origin" not in admin_preflight.headers
        evil = anonymous.options(
            "/v1/events", headers=preflight | {"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in evil.headers
        read_preflight = anonymous.options(
            "/v1/players/p1", headers=preflight | {"Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in read_preflight.headers  # not allowed yet
    with ops.client(ingest) as client:
        sent = client.post("/v1/events", json=event(), headers={"Origin": ALLOWED})
        assert sent.status_code == 202
        assert sent.headers["access-control-allow-origin"] == ALLOWED
        other = client.post("/v1/events", json=event(), headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    site = "https://web.example.org"
    with ops.client(ops.key(game, "admin")) as api:
        bad = api.put("/v1/admin/cors", json={"origins": ["not an origin"]})
        assert bad.status_code == 400
        set_ = api.put("/v1/admin/cors", json={"origins": [site]}, headers={"Origin": site})
        assert set_.json() == {"origins": [site]}
        assert "access-control-allow-origin" not in set_.headers  # admin: never
    with ops.client(read) as client:

        def read_opened() -> bool:
            got = client.get("/v1/players/p1", headers={"Origin": site})
            return bool(got.headers.get("access-control-allow-origin") == site)

        wait_for(read_opened, timeout=5)  # every worker reloads on the notice
        with ops.client() as anonymous:
            answer = anonymous.options(
                "/v1/players/p1",
                headers={"Origin": site, "Access-Control-Request-Method": "GET"},
            )
            assert answer.headers["access-control-allow-origin"] == site


def generations(server: ServeProcess, probes: int = 16) -> set[tuple[int, int]]:
    """(worker pid, generation) of the workers answering ``probes`` fresh connections."""
    with fresh(server, "") as client:
        return {
            (h["worker"], h["generation"])
            for h in (client.get("/health").json() for _ in range(probes))
        }


def test_sighup_replaces_every_worker_under_load_without_a_failed_request(
    ops: ServeProcess,
) -> None:
    """Last in the module: it replaces the workers the other tests used."""
    game = unique("hup")
    players = [f"h{i}" for i in range(8)]
    ingest, read = ops.key(game, "ingest"), ops.key(game, "read")
    with ops.client(ops.key(game, "admin")) as admin:
        uploaded = admin.post(
            "/v1/admin/models/offers",
            files={"model": ("m.onnx", m.sklearn_classifier()), "manifest": (None, m.MANIFEST)},
        )
        assert uploaded.status_code == 201, uploaded.text
    accepted: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def purchases() -> dict[str, object]:
        now = datetime.now(UTC).isoformat()
        return {
            "events": [
                {
                    "event_id": unique("e"),
                    "player_id": p,
                    "type": "purchase",
                    "ts": now,
                    "props": {"amount": 1.0},
                }
                for p in players
            ]
        }

    with ops.client(ingest) as client:
        assert client.post("/v1/events", json=purchases()).status_code == 202
    accepted.update(players)
    with ops.client(read) as client:
        wait_for(lambda: all(client.get(f"/v1/players/{p}").status_code == 200 for p in players))

    def load(key: str, predict: bool) -> None:
        with ops.client(key) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if predict:
                        got = client.get(f"/v1/players/{players[n % 8]}/predictions/offers")
                    else:
                        got = client.post("/v1/events", json=purchases())
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    statuses[got.status_code] += 1
                    if not predict and got.status_code == 202:
                        accepted.update(players)

    before = {pid for pid, _ in generations(ops)}
    threads = [
        threading.Thread(target=load, args=(k, k == read)) for k in (ingest, ingest, read, read)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(statuses.values()) > 20, timeout=30)
        assert ops.proc is not None
        ops.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: {g for _, g in generations(ops)} == {1}, timeout=180, interval=0.5)
        wait_for(lambda: len(ops.workers()) == 2, timeout=60)
        served = sum(statuses.values())
        wait_for(lambda: sum(statuses.values()) > served + 20, timeout=30)  # still serving
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert set(statuses) <= {200, 202}, statuses
    after = {pid for pid, _ in generations(ops, 24)}
    assert not after & before  # every worker is a new one
    assert {w.pid for w in ops.workers()} == after
    with ops.client(read) as client:  # nothing lost, nothing counted twice

        def folded() -> dict[str, int]:
            return {p: client.get(f"/v1/players/{p}").json()["events_applied"] for p in players}

        wait_for(lambda: folded() == dict(accepted), timeout=60)

    # A features file that needs a replay is refused, not half-applied.
    features = Path(ops.env["PLAYERPULSE_FEATURES"])
    original = features.read_text()
    features.write_text(original.replace('window = "7d"', 'window = "8d"', 1))
    try:
        ops.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "upgrade refused" in ops.log(), timeout=30)
        assert "profiles must be rebuilt" in ops.log()
        assert {g for _, g in generations(ops)} == {1}
    finally:
        features.write_text(original)
