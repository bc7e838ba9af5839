"""``playerpulse serve``: a supervisor, its embedded services, and N worker processes.

The supervisor (the process the user started) refuses a bad features file, starts the
embedded PostgreSQL and broker the settings leave unconfigured, migrates, creates the
topics, binds the HTTP port once, and runs ``--workers`` worker processes on that one
socket. Every worker does everything (HTTP, fold, archive): they share the port (the
kernel hands each connection to one of them) and join one Kafka consumer group (the
broker spreads the partitions over them), as separate copies of the service on other
machines do. A worker that dies is restarted; an embedded service that dies stops it all.

Signals are ours, not uvicorn's: SIGTERM or Ctrl-C reaches the supervisor, which stops
the workers (each stops HTTP, flushes its archive buffer, stops Faust), then the embedded
children, and exits 0. Every child gets a death signal from the kernel should the
supervisor itself be killed, so even ``kill -9`` leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from app.db.engine import SchemaTooNewError
from app.disk import DiskWatch
from app.domain.features import FeatureFileError, load_features
from app.embedded import EmbeddedService, Runtime, embedded_runtime
from app.embedded.process import ChildProcess
from app.log import get_logger
from app.settings import Settings

log = get_logger(__name__)

WORKER_FD = "PLAYERPULSE_WORKER_FD"
"""Set for a worker: the file descriptor of the HTTP socket the supervisor bound."""
WORKER_INDEX = "PLAYERPULSE_WORKER_INDEX"
"""Set for a worker: its number, from 0."""
WORKER_GENERATION = "PLAYERPULSE_WORKER_GENERATION"
"""Set for a worker: how many rolling upgrades (SIGHUP) preceded its start."""
WORKER_READY = "PLAYERPULSE_WORKER_READY"
"""Set for a worker: a file it creates once it serves (the supervisor waits for it)."""

WORKER_START_TIMEOUT_S = 180.0
"""How long a worker started by an upgrade gets to become ready."""
DRAIN_TIMEOUT_S = 10.0
"""How long a worker being replaced waits for its open connections to finish."""
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess mode: every worker's metrics, summed at /metrics."""

WORKER_STOP_TIMEOUT_S = 30.0
"""How long the workers get to stop after SIGTERM before they are killed."""
CRASH_WINDOW_S = 60.0
"""A worker that dies this many times within this window is not restarted again."""
CRASH_LIMIT = 5
EMBEDDED_RESTART_LIMIT = 5
"""An embedded PostgreSQL or broker that dies (or fails to start again) this many times
within EMBEDDED_RESTART_WINDOW_S stops the service, with the reason logged."""
EMBEDDED_RESTART_WINDOW_S = 600.0
EMBEDDED_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""The waits before successive restarts of an embedded child within the window."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while starting up."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


# -- supervisor -----------------------------------------------------------------------------


def serve(settings: Settings, host: str, port: int, workers: int | None = None) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        load_features(settings.features_path)  # refuse a bad file before starting anything
    except FeatureFileError as exc:
        log.error("cannot start: the features file has an error", error=str(exc))
        return 2
    count = workers or settings.worker_count
    problem = _tls_problem(settings)
    if problem is not None:
        log.error("cannot start: TLS", error=problem)
        return 2
    try:
        listener = _bind(host, port)
    except OSError as exc:
        log.error("cannot listen", host=host, port=port, error=str(exc))
        return 1
    try:
        with listener, embedded_runtime(settings) as runtime:
            concrete = settings.with_endpoints(
                database_url=runtime.database_url, kafka_brokers=runtime.kafka_brokers
            )
            log.info(
                "starting",
                host=host,
                port=port,
                scheme="https" if settings.tls_cert else "http",
                workers=count,
                data_dir=str(settings.data_dir.resolve()),
                database="embedded" if settings.embedded_postgres else "external",
                broker=_broker_kind(settings),
            )
            try:
                _prepare(concrete)
            except SchemaTooNewError as exc:
                log.error("refusing to start: the data is newer than this build", error=str(exc))
                return 1
            return _Supervisor(concrete, runtime, listener, count).run()
    except Interrupted as exc:
        log.info("interrupted while starting", signal=str(exc))
        return 0


def _tls_problem(settings: Settings) -> str | None:
    """Why the TLS certificate and key cannot be used, or None (also when TLS is off)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key
        )
    except (OSError, ssl.SSLError) as exc:
        return f"{settings.tls_cert} / {settings.tls_key}: {exc}"
    return None


def _broker_kind(settings: Settings) -> str:
    if not settings.embedded_broker:
        return "external"
    return "embedded Tansu (in memory)" if settings.broker == "memory" else "embedded Apache Kafka"


def _bind(host: str, port: int) -> socket.socket:
    """The HTTP socket, bound but not listening: the first ready worker starts listening.

    Until then a connection is refused, not queued, so "connected" keeps meaning "ready".
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def worker_command() -> list[str]:
    """The command line that starts one worker, from a venv or from the one-file build.

    A frozen executable (``make dist``) has no interpreter that could run ``-m
    app.worker``: it is re-invoked with its hidden ``worker`` subcommand instead, and
    reuses the files its supervisor already unpacked.
    """
    if getattr(sys, "frozen", False):
        return [sys.executable, "worker"]
    return [sys.executable, "-m", "app.worker"]


def _prepare(settings: Settings) -> None:
    """What runs once per start, before any worker: migrations, topics, metrics files."""
    from app.db.engine import migrate
    from app.streams.producer import ensure_topic

    assert settings.database_url is not None and settings.kafka_brokers is not None
    migrate(settings.database_url)
    for topic in (settings.events_topic, settings.predictions_topic):
        ensure_topic(
            settings.kafka_brokers, topic, settings.topic_partitions, settings.topic_replication
        )
    _await_group_coordinator(settings.kafka_brokers, settings.consumer_group)
    metrics_dir = _metrics_dir(settings)
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start from zero with the service
    metrics_dir.mkdir(parents=True)


def _upgrade_refusal(settings: Settings) -> str | None:
    """Why a rolling upgrade cannot go ahead now, or None."""
    try:
        features = load_features(settings.features_path)
    except FeatureFileError as exc:
        return f"the features file has an error: {exc}"
    changed = asyncio.run(_features_needing_replay(settings, features))
    if changed:
        return (
            f"the features file changed {', '.join(changed)}: profiles must be rebuilt, which "
            "a rolling upgrade cannot do halfway; restart the service (or run `playerpulse "
            "replay` with it stopped)"
        )
    return None


async def _features_needing_replay(settings: Settings, features: Any) -> list[str]:
    """The features whose definition differs from the one the profiles were built with."""
    from app.db.engine import create_engine
    from app.db.feature_defs import FeatureDefRepository
    from app.db.profiles import ProfileRepository

    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            stored = await FeatureDefRepository().fingerprints(conn)
            if not stored and not await ProfileRepository().has_profiles(conn):
                return []
    finally:
        await engine.dispose()
    return sorted(name for name, fp in features.fingerprints.items() if stored.get(name) != fp)


def _await_group_coordinator(brokers: str, group: str, timeout: float = 60.0) -> None:
    """Wait until the broker can coordinate the consumer group.

    A new broker creates and loads its offsets topic on the first group request; asked
    here once, the workers do not each log coordinator errors while that happens.
    """
    import logging

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": brokers,
        "logger": logging.getLogger("librdkafka.admin"),
    }
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                log.warning("the consumer group's coordinator is not ready", error=str(exc))
                return
            time.sleep(0.1)


def _metrics_dir(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "run" / f"metrics-{os.getpid()}"


@dataclass
class _Worker:
    index: int
    child: ChildProcess
    started: float = 0.0
    crashes: list[float] = field(default_factory=list)


class _Supervisor:
    """Starts the workers, restarts one that dies, replaces them one at a time on SIGHUP
    (a rolling upgrade), stops them all on SIGTERM or SIGINT."""

    def __init__(
        self, settings: Settings, runtime: Runtime, listener: socket.socket, count: int
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.listener = listener
        self.count = count
        self.stopping: str | None = None
        self.upgrade_requested = False
        self.embedded_failures: dict[str, list[float]] = {}
        self.disk = DiskWatch.of(settings)
        """Read before restarting an embedded child: on a full disk it would only die again."""
        self.generation = 0
        env = {k: v for k, v in os.environ.items() if k != METRICS_DIR}
        env.update(
            {
                "PLAYERPULSE_DATABASE_URL": settings.database_url or "",
                "PLAYERPULSE_KAFKA_BROKERS": settings.kafka_brokers or "",
                "PLAYERPULSE_LOG_FORMAT": settings.log_format,
                WORKER_FD: str(listener.fileno()),
                "PLAYERPULSE_TLS_CERT": str(settings.tls_cert.resolve())
                if settings.tls_cert
                else "",
                "PLAYERPULSE_TLS_KEY": str(settings.tls_key.resolve()) if settings.tls_key else "",
                METRICS_DIR: str(_metrics_dir(settings)),
            }
        )
        self.env = env

    def _child(self, index: int) -> ChildProcess:
        return ChildProcess(
            f"worker-{index}",
            worker_command(),
            None,  # workers log to our stderr
            stop_signal=signal.SIGTERM,
            # If the supervisor is killed, its workers go at once: what they held
            # unacknowledged is redelivered to the next start, nothing is lost.
            death_signal=signal.SIGKILL,
            env={
                **self.env,
                WORKER_INDEX: str(index),
                WORKER_GENERATION: str(self.generation),
                WORKER_READY: str(self._ready_file(index)),
            },
            pass_fds=[self.listener.fileno()],
        )

    def _ready_file(self, index: int) -> Path:
        return _metrics_dir(self.settings).parent / f"ready-{os.getpid()}-{self.generation}-{index}"

    def _start(self, worker: _Worker) -> None:
        worker.child = self._child(worker.index)
        worker.child.start()
        worker.started = time.monotonic()

    def run(self) -> int:
        """Supervise until a signal (exit 0) or an unrecoverable failure (exit 1)."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self.stopping is None:
                self.stopping = signal.Signals(signum).name

        def on_hangup(_signum: int, _frame: FrameType | None) -> None:
            self.upgrade_requested = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)
        workers = [_Worker(i, self._child(i)) for i in range(self.count)]
        code = 0
        try:
            for worker in workers:
                self._start(worker)
            code = self._watch(workers)
        finally:
            self._stop_all(workers)
        return code

    def _watch(self, workers: list[_Worker]) -> int:
        while self.stopping is None:
            if self.upgrade_requested:
                self.upgrade_requested = False
                self._upgrade(workers)
                continue
            dead = self.runtime.dead_service()
            if dead is not None and not self._restart_embedded(*dead):
                return 1
            for worker in workers:
                code = worker.child.exited()
                if code is None:
                    continue
                now = time.monotonic()
                worker.crashes = [t for t in worker.crashes if now - t < CRASH_WINDOW_S]
                worker.crashes.append(now)
                if len(worker.crashes) >= CRASH_LIMIT:
                    log.error(
                        "worker keeps dying; stopping",
                        worker=worker.index,
                        exit_code=code,
                        deaths=len(worker.crashes),
                        within_s=CRASH_WINDOW_S,
                    )
                    return 1
                log.error("worker died; restarting it", worker=worker.index, exit_code=code)
                self._start(worker)
            time.sleep(0.1)
        log.info("stopping", signal=self.stopping, workers=len(workers))
        return 0

    def _restart_embedded(self, what: str, service: EmbeddedService) -> bool:
        """Start a dead embedded child again, with backoff; False when it keeps failing
        (EMBEDDED_RESTART_LIMIT times within EMBEDDED_RESTART_WINDOW_S) or a signal came."""
        child = service.child
        name = child.name if child is not None else type(service).__name__
        tail = child.log_tail(10) if child is not None else ""
        log.error("embedded service died; restarting it", child=what, log_tail=tail)
        while self.stopping is None:
            if not self._await_disk_space(name):
                break
            now = time.monotonic()
            failures = [
                t
                for t in self.embedded_failures.get(name, [])
                if now - t < EMBEDDED_RESTART_WINDOW_S
            ]
            failures.append(now)
            self.embedded_failures[name] = failures
            if len(failures) > EMBEDDED_RESTART_LIMIT:
                log.error(
                    "embedded service keeps failing; stopping",
                    child=name,
                    failures=len(failures) - 1,
                    within_s=EMBEDDED_RESTART_WINDOW_S,
                    last=what,
                    log_tail=tail,
                )
                return False
            wait = EMBEDDED_BACKOFF_S[min(len(failures), len(EMBEDDED_BACKOFF_S)) - 1]
            deadline = time.monotonic() + wait
            while self.stopping is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.stopping is not None:
                break
            started = time.monotonic()
            try:
                service.start()
            except (RuntimeError, OSError) as exc:
                what = f"{name} did not start again: {exc}"
                tail = str(exc)[-2000:]
                log.error("embedded service did not start again", child=name, error=tail)
                continue
            log.warning(
                "embedded service restarted",
                child=name,
                seconds=round(time.monotonic() - started, 2),
                restarts_in_window=len(failures),
            )
            return True
        return True  # stopping anyway: the caller sees the signal

    def _await_disk_space(self, name: str) -> bool:
        """Wait (uncounted: it is not the child's failure) while a watched directory is
        below PLAYERPULSE_DISK_MIN_FREE; False if a signal came meanwhile."""
        self.disk.check()
        if self.disk.low is None:
            return True
        low = self.disk.low
        log.error(
            "not restarting an embedded service until disk space returns",
            child=name,
            directory=low.path,
            free_bytes=low.free_bytes,
            min_free_bytes=low.min_free_bytes,
        )
        while self.stopping is None and self.disk.low is not None:
            time.sleep(1.0)
            self.disk.check()
        return self.stopping is None

    def _upgrade(self, workers: list[_Worker]) -> None:
        """Replace each worker in turn by a freshly started one (new code, features file):
        the new one serves before the old one drains, so no request finds no worker.

        Refused, with the reason logged, when the features file is invalid or changed in a
        way that needs a replay (a rolling upgrade cannot rebuild profiles halfway)."""
        refusal = _upgrade_refusal(self.settings)
        if refusal is not None:
            log.error("upgrade refused; the workers keep running", reason=refusal)
            return
        self.generation += 1
        log.info("rolling upgrade", generation=self.generation, workers=len(workers))
        for position, old in enumerate(list(workers)):
            new = _Worker(old.index, self._child(old.index))
            ready = self._ready_file(old.index)
            ready.unlink(missing_ok=True)
            workers.append(new)  # stopped with the others should a signal come now
            self._start(new)
            if not self._await_ready(new, ready):
                log.error("upgrade stopped: a new worker did not start", worker=old.index)
                workers.remove(new)
                self._stop_one(new)
                return
            ready.unlink(missing_ok=True)
            workers.remove(new)
            workers[position] = new
            self._stop_one(old, signal.SIGHUP)  # drains: stops accepting, finishes, leaves
            log.info("worker replaced", worker=old.index, generation=self.generation)
        log.info("rolling upgrade done", generation=self.generation)

    def _await_ready(self, worker: _Worker, ready: Path) -> bool:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not ready.exists():
            if self.stopping is not None or worker.child.exited() is not None:
                return False
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _stop_one(self, worker: _Worker, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = worker.child.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time; killing it", worker=worker.index)
            proc.kill()
            proc.wait()

    def _stop_all(self, workers: list[_Worker]) -> None:
        # Ignore further signals: a second Ctrl-C must not interrupt the clean stop.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        procs = [w.child.proc for w in workers if w.child.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # all at once: they stop side by side
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for worker, proc in zip(workers, procs, strict=True):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Safe (what it held unacknowledged is redelivered at the next start), but
                # a bug: its threads' stacks go to the log first (faulthandler, SIGUSR1).
                log.error("worker did not stop in time; killing it", worker=worker.index)
                proc.send_signal(signal.SIGUSR1)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(1.0)
                proc.kill()
                proc.wait()
            log.info("worker stopped", worker=worker.index, exit_code=proc.returncode)


# -- worker ---------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (we install ours on the loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _announce_ready(server: uvicorn.Server, ready_file: Path) -> None:
    """Create ``ready_file`` once the server serves (a rolling upgrade waits for it)."""
    while not server.started:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(ready_file.touch)


async def _drain(server: uvicorn.Server, app: Any) -> None:
    """Leave without failing a request: stop accepting (the other workers take the new
    connections), answer what comes on open connections with ``Connection: close``, and
    stop once they are all closed (or after DRAIN_TIMEOUT_S)."""
    for listening in getattr(server, "servers", []):
        listening.close()
    app.asgi_handler.closing = True
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while server.server_state.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    server.should_exit = True


async def _serve_worker(
    settings: Settings,
    sock: socket.socket,
    generation: int = 0,
    ready_file: Path | None = None,
    index: int = 0,
) -> int:
    from app.api.app import create_app

    outcome = {"code": 0}

    def fatal(reason: str) -> None:
        outcome["code"] = 1
        server.should_exit = True

    app = create_app(settings, on_fatal=fatal, worker_index=index)
    app.state.generation = generation
    config = uvicorn.Config(
        app,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        log.info("worker stopping", signal=sig.name)
        server.should_exit = True

    def on_hangup() -> None:
        log.info("worker draining: replaced by a new one")
        tasks.append(loop.create_task(_drain(server, app)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if ready_file is not None:
        tasks.append(loop.create_task(_announce_ready(server, ready_file)))
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in tasks:
            task.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    if not server.started:
        log.error("the worker did not start; see the errors above")
        return 1
    return outcome["code"]


def run_worker(settings: Settings) -> int:
    """A worker's life: serve HTTP and fold on the supervisor's socket until SIGTERM."""
    sock = socket.socket(fileno=int(os.environ[WORKER_FD]))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks, should it ever hang
    # SIGTERM before the loop runs (during imports, say) just ends the worker.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    generation = int(os.environ.get(WORKER_GENERATION, "0"))
    ready = os.environ.get(WORKER_READY)
    index = int(os.environ.get(WORKER_INDEX, "0"))
    return _run(_serve_worker(settings, sock, generation, Path(ready) if ready else None, index))


def _run(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional in spirit
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]
