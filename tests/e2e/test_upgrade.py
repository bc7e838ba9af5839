"""Upgrade by replacing the executable: `serve` on a data dir that a newer build migrated."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg

from app.db.engine import libpq_url, migrate
from app.embedded.postgres import EmbeddedPostgres
from tests.support import PLAYERPULSE, ServeProcess


async def _execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def test_serve_refuses_a_data_dir_newer_than_itself_and_changes_nothing(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path, {"PLAYERPULSE_BROKER": "memory"})
    postgres = EmbeddedPostgres(Path(server.env["PLAYERPULSE_DATA_DIR"]))
    url = postgres.start()
    try:
        migrate(url)
        # As a newer build leaves it: a revision this one has never heard of.
        asyncio.run(_execute(url, "UPDATE alembic_version SET version_num = '0099_future'"))
    finally:
        postgres.stop()
    result = subprocess.run(
        [PLAYERPULSE, "serve", "--port", str(server.port)],
        cwd=tmp_path,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "refusing to start: the data is newer than this build" in output
    assert "'0099_future'" in output
    assert "a newer release migrated it" in output
    url = postgres.start()
    try:
        rows = asyncio.run(_fetch(url))
    finally:
        postgres.stop()
    assert rows == ["0099_future"]


async def _fetch(url: str) -> list[str]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        return [row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()
