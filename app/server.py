"""``playerpulse serve``: embedded services, migrations, then the HTTP server until a signal.

Signals are ours, not uvicorn's: SIGTERM or Ctrl-C stops HTTP, drains the agents,
stops Faust, then the embedded children, and the process exits 0. (uvicorn would
re-raise the signal after its shutdown, which kills the process before its children
are stopped and makes the exit code -15.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

import uvicorn

from app.api.app import create_app
from app.db.engine import migrate_async
from app.domain.features import FeatureFileError, load_features
from app.embedded import Runtime, embedded_runtime
from app.log import get_logger
from app.settings import Settings

log = get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (we install ours on the loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while starting up."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _ignore(signum: int, _frame: FrameType | None) -> None:
    log.warning("already stopping", signal=signal.Signals(signum).name)


async def _serve(settings: Settings, runtime: Runtime, host: str, port: int) -> int:
    assert settings.database_url is not None
    await migrate_async(settings.database_url)
    outcome = {"code": 0}

    def fatal(reason: str) -> None:
        outcome["code"] = 1
        server.should_exit = True

    config = uvicorn.Config(
        create_app(settings, on_fatal=fatal),
        host=host,
        port=port,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("stopping", signal=sig.name)
        if server.should_exit and sig is signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    async def watch_children() -> None:
        while not server.should_exit:
            dead = runtime.dead_child()
            if dead is not None:
                log.error("embedded service died; stopping", child=dead)
                outcome["code"] = 1
                server.should_exit = True
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_children())
    try:
        await server.serve()
    finally:
        watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, _ignore)
    if not server.started:
        log.error("the service did not start; see the errors above")
        return 1
    return outcome["code"]


def serve(settings: Settings, host: str, port: int) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        load_features(settings.features_path)  # refuse a bad file before starting anything
    except FeatureFileError as exc:
        log.error("cannot start: the features file has an error", error=str(exc))
        return 2
    try:
        with embedded_runtime(settings) as runtime:
            concrete = settings.with_endpoints(
                database_url=runtime.database_url, kafka_brokers=runtime.kafka_brokers
            )
            log.info(
                "starting",
                host=host,
                port=port,
                data_dir=str(settings.data_dir.resolve()),
                database="embedded" if settings.embedded_postgres else "external",
                broker="embedded (in memory)" if settings.embedded_broker else "external",
            )
            return _run(_serve(concrete, runtime, host, port))
    except Interrupted as exc:
        log.info("interrupted while starting", signal=str(exc))
        return 0


def _run(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional in spirit
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]
