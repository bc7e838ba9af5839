"""Helpers for integration and end-to-end tests: real services, started and stopped here."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from app.embedded.process import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLAYERPULSE = str(BIN / "playerpulse")

EXTERNAL_BROKERS = os.environ.get("PLAYERPULSE_TEST_KAFKA_BROKERS") or None
"""Set by `make test-kafka` (CI): run against this Apache Kafka instead of Tansu."""
EXTERNAL_DATABASE = os.environ.get("PLAYERPULSE_TEST_DATABASE_URL") or None


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last result."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met after {timeout}s; last result: {last!r}")


def unique(prefix: str) -> str:
    """A name no other test uses (topics, groups, games)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class ServeProcess:
    """A real `playerpulse serve` child, its environment, and a CLI sharing that environment."""

    def __init__(
        self,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        *,
        serve_args: list[str] | None = None,
        tls_ca: ssl.SSLContext | None = None,
    ) -> None:
        """``tls_ca``: serve HTTPS (``serve_args`` name the certificate); the context
        trusts its CA."""
        self.workdir = workdir
        self.port = free_port()
        self.serve_args = serve_args or []
        self.verify: ssl.SSLContext | bool = tls_ca if tls_ca is not None else True
        self.url = f"{'https' if tls_ca is not None else 'http'}://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYERPULSE_")}
        env.update(
            {
                "PLAYERPULSE_DATA_DIR": str(workdir / "var"),
                "PLAYERPULSE_LOG_FORMAT": "json",
                "PLAYERPULSE_LAKE_FLUSH_S": "1",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        if EXTERNAL_BROKERS:
            env["PLAYERPULSE_KAFKA_BROKERS"] = EXTERNAL_BROKERS
            env["PLAYERPULSE_EVENTS_TOPIC"] = unique("events")
            env["PLAYERPULSE_CONSUMER_GROUP"] = unique("playerpulse")
        if EXTERNAL_DATABASE:
            env["PLAYERPULSE_DATABASE_URL"] = EXTERNAL_DATABASE
        env.update(extra_env or {})
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"serve-{self.port}.log"

    def start(self, timeout: float = 120.0) -> ServeProcess:
        """Start the server and wait until /health answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [PLAYERPULSE, "serve", "--port", str(self.port), *self.serve_args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=1, verify=self.verify)
                return health.status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(healthy, timeout, 0.1)
        except BaseException:
            if self.proc.poll() is None:
                self.kill_tree()  # a server that did not come up must not outlive the test
            raise
        return self

    def log(self) -> str:
        """The server's output so far."""
        return self.log_path.read_text(errors="replace")[-20000:]

    def descendants(self) -> list[psutil.Process]:
        """Every process below the server (embedded PostgreSQL, broker, ...)."""
        assert self.proc is not None
        try:
            children: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
            return children
        except psutil.NoSuchProcess:
            return []

    def kill_tree(self) -> list[int]:
        """SIGKILL the server and every process below it at once (a power cut, short of
        the disk); wait until all are gone and return their pids."""
        assert self.proc is not None
        victims = [psutil.Process(self.proc.pid), *self.descendants()]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        _gone, alive = psutil.wait_procs(victims, timeout=10)
        assert not alive, f"still running after SIGKILL: {alive}"
        return [p.pid for p in victims]

    def workers(self) -> list[psutil.Process]:
        """The worker processes of the server (``python -m app.worker``)."""
        found = []
        for child in self.descendants():
            with contextlib.suppress(psutil.Error):
                if "app.worker" in child.cmdline():
                    found.append(child)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"serve did not stop in {timeout}s:\n{self.log()}") from None
        return self.proc.returncode

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `playerpulse ARGS` with the server's environment and working directory."""
        result = subprocess.run(
            [PLAYERPULSE, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"playerpulse {' '.join(args)} failed:\n{result.stderr}")
        return result

    def key(self, game: str, role: str) -> str:
        """A new API key, made with the CLI as a user would."""
        out = self.cli("keys", "create", "--game", game, "--role", role).stdout
        lines = out.splitlines()
        assert len(lines) == 1, f"expected the key alone on stdout, got {out!r}"
        return lines[0]

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document the server serves."""
        with self.client() as client:
            reply = client.get("/schema/openapi.json")
        assert reply.status_code == 200, reply.text
        document: dict[str, Any] = reply.json()
        return document

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client for the server, authenticated with ``key`` if given."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=self.verify)


def parquet_holds(path: Path, needle: str) -> list[str]:
    """Where a Parquet file holds ``needle``: raw bytes, a value read back, a statistic.

    Pages are compressed, so the raw bytes alone prove nothing: every value is read back
    too (dictionaries decoded), and every column chunk's min/max statistics looked at.
    """
    import pyarrow.parquet as pq

    found = []
    if needle.encode() in path.read_bytes():
        found.append("raw bytes")
    table = pq.read_table(path)
    for name, column in zip(table.column_names, table.columns, strict=True):
        if any(needle in str(value) for value in column.to_pylist() if value is not None):
            found.append(f"column {name}")
    meta = pq.ParquetFile(path).metadata
    for group in range(meta.num_row_groups):
        for index in range(meta.num_columns):
            stats = meta.row_group(group).column(index).statistics
            if stats is not None and stats.has_min_max and needle in f"{stats.min}|{stats.max}":
                found.append(f"statistics of column {index}")
    if needle in str(meta.metadata or {}):
        found.append("key-value metadata")
    return found


def database_holds(url: str, needle: str) -> list[str]:
    """Every table of the database whose rows hold ``needle``, as text or in a bytea."""
    import asyncio

    import asyncpg

    async def scan() -> list[str]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            found = []
            tables = await conn.fetch(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
            for schema, table in tables:
                name = f'"{schema}"."{table}"'
                rows = await conn.fetchval(
                    f"SELECT count(*) FROM {name} t WHERE position($1 in t::text) > 0", needle
                )
                if rows:
                    found.append(f"{name}: {rows} rows")
                columns = await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 "
                    "AND table_name = $2 AND data_type = 'bytea'",
                    schema,
                    table,
                )
                for (column,) in columns:
                    rows = await conn.fetchval(
                        f"SELECT count(*) FROM {name} WHERE position(convert_to($1, 'UTF8') "
                        f'in "{column}") > 0',
                        needle,
                    )
                    if rows:
                        found.append(f"{name}.{column}: {rows} rows")
            return found
        finally:
            await conn.close()

    return asyncio.run(scan())
