"""The command line, as an operator uses it: keys with or without a server, lake queries."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import ServeProcess


def test_key_created_before_the_server_starts_works_after(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path)
    key = server.key("early", "read")  # nothing running: the CLI starts PostgreSQL itself
    assert key.startswith("pp_")
    server.start()
    try:
        with server.client(key) as client:
            assert client.get("/v1/players/nobody").status_code == 404
    finally:
        assert server.stop() == 0


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    cli = ServeProcess(tmp_path)
    bad_game = cli.cli("keys", "create", "--game", "no/slash", "--role", "read", check=False)
    assert bad_game.returncode == 2
    assert "--game" in bad_game.stderr
    bad_role = cli.cli("keys", "create", "--game", "g", "--role", "root", check=False)
    assert bad_role.returncode == 2
    assert "--role" in bad_role.stderr


def test_analytics_query_formats_and_errors(tmp_path: Path) -> None:
    cli = ServeProcess(tmp_path)
    empty = cli.cli("analytics", "query", "SELECT count(*) AS n FROM events", "--format", "json")
    assert json.loads(empty.stdout) == [{"n": 0}]
    csv_out = cli.cli("analytics", "query", "SELECT 1 AS a, 'x' AS b", "--format", "csv")
    assert csv_out.stdout.splitlines() == ["a,b", "1,x"]
    broken = cli.cli("analytics", "query", "SELECT nope FROM events", check=False)
    assert broken.returncode == 1
    assert "nope" in broken.stderr
