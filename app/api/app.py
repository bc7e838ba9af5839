"""The Litestar application, with the Faust app co-hosted in its lifespan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from faust.contrib.asgi import faust_app_running
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.bootstrap import Services, open_services
from app.gc_tuning import settle_heap
from app.log import get_logger
from app.process_memory import publish_forever
from app.settings import Settings

from .auth import PUBLIC_PATHS, ApiKeyAuthentication
from .dashboard import STATIC
from .errors import handle_http_error, handle_unexpected
from .model_routes import STRICT_BODIES
from .openapi import finish, operation_id
from .ops import AdminAudit, Cors
from .ops_routes import OPS_BODIES, document_ops
from .routes import build_routes
from .segment_routes import SEGMENT_BODIES

log = get_logger(__name__)


class ServerTiming:
    """Pure ASGI: how long the app took to answer, as ``Server-Timing: app;dur=MS``.

    Wraps Litestar's whole request handling (routing, authentication, guards, the
    handler, exception handling, encoding the body), from the call until the response
    starts; uvicorn's own parsing and writing are outside it. Added to every HTTP
    response, next to the finer entries a handler may send (``profile``, ``model``).
    """

    __slots__ = ("app", "closing")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.closing = False
        """Set while the worker drains: every answer closes its connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter_ns()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter_ns() - started) / 1e6
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"server-timing", b"app;dur=%.3f" % took),
                ]
                if self.closing:
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        await self.app(scope, receive, timed)


# What each route may ask for by name (Litestar dependency injection): one part of the
# services each, never the whole container.
PROVIDED = {
    "profiles": "profiles",
    "read_your_writes": "read_your_writes",
    "failed_events": "failed_events",
    "ingestor": "ingestor",
    "registry": "registry",
    "predictions": "predictions",
    "experiments": "experiments",
    "privacy": "privacy",
    "eraser": "eraser",
    "lag_probe": "lag",
    "keys": "keys",
    "audit": "audit",
    "cors": "cors",
    "segment_catalog": "segments",
    "segment_reads": "segment_reads",
    "webhooks": "webhooks",
}

DOCS_ASSETS = "/docs/assets"


def _provider(attribute: str) -> Provide:
    def provide(state: State) -> Any:
        return getattr(state.services, attribute)

    return Provide(provide, sync_to_thread=False)


def _openapi_config() -> OpenAPIConfig:
    """The document at /schema/openapi.json, Swagger UI at /schema/swagger and ReDoc at
    /schema/redoc, their assets served from here (no CDN)."""
    favicon = (
        f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/swagger-ui/favicon-32x32.png'>"
    )
    swagger = f"{DOCS_ASSETS}/swagger-ui"
    return OpenAPIConfig(
        title="PlayerPulse",
        version=__version__,
        description="Live player events in; real-time profiles and ONNX predictions out. "
        'Every error is `{"error": "...", "detail": ...}`.',
        path="/schema",
        operation_id_creator=operation_id,
        render_plugins=[
            SwaggerRenderPlugin(
                js_url=f"{swagger}/swagger-ui-bundle.js",
                css_url=f"{swagger}/swagger-ui.css",
                standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
                favicon=favicon,
            ),
            RedocRenderPlugin(
                js_url=f"{DOCS_ASSETS}/redoc/redoc.standalone.js",
                google_fonts=False,
                favicon=favicon,
            ),
        ],
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(type="http", scheme="bearer", description="API key")
            }
        ),
    )


def _lifespan(
    settings: Settings, on_fatal: Callable[[str], None] | None, worker_index: int = 0
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Open the services, run the stream agents beside HTTP, and stop in order.

    ``on_fatal`` is called if the stream agents crash: a process that accepts events it
    can no longer fold must stop (and be restarted), not limp on.
    """

    async def watch(services: Services) -> None:
        while not services.stream_app.crashed:
            await asyncio.sleep(0.5)
        reason = repr(services.stream_app.crash_reason)
        log.error("stream agents crashed; stopping the service", reason=reason)
        if on_fatal is not None:
            on_fatal(reason)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await open_services(settings)
        app.state.services = services
        app.state.api_keys = services.keys  # for the authentication middleware
        try:
            # Before the agents join: a changed features file rebuilds profiles first.
            await services.start()
            settle_heap()
            async with faust_app_running(services.stream_app, stop_timeout=30):
                log.info("stream agents started", topic=settings.events_topic)
                watcher = asyncio.create_task(watch(services))
                memory = asyncio.create_task(
                    publish_forever(worker_index, folder=services.folder), name="memory"
                )
                yield
                watcher.cancel()
                memory.cancel()
                # HTTP has stopped taking requests: archive what is buffered, then stop.
                # Bounded: what is not archived stays unacknowledged and is redelivered.
                try:
                    async with asyncio.timeout(15):
                        await services.flush()
                except TimeoutError:
                    log.error("archive buffers not written out in time; left to redelivery")
        finally:
            await services.close()

    return lifespan


def create_app(
    settings: Settings, on_fatal: Callable[[str], None] | None = None, worker_index: int = 0
) -> Litestar:
    """The ASGI app for ``settings``, which must name a database and brokers (``on_fatal``:
    see :func:`_lifespan`; ``worker_index``: which worker of ``serve`` this is)."""
    docs_assets = create_static_files_router(
        path=DOCS_ASSETS, directories=[STATIC / "docs"], include_in_schema=False
    )
    app = Litestar(
        route_handlers=[*build_routes(settings), docs_assets],
        lifespan=[_lifespan(settings, on_fatal, worker_index)],
        dependencies={name: _provider(attribute) for name, attribute in PROVIDED.items()},
        middleware=[DefineMiddleware(ApiKeyAuthentication, exclude=PUBLIC_PATHS)],
        exception_handlers={HTTPException: handle_http_error, Exception: handle_unexpected},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=_openapi_config(),
        debug=False,
        logging_config=None,  # structlog owns logging (app.log)
    )
    finish(app, settings, [*STRICT_BODIES, *OPS_BODIES, *SEGMENT_BODIES])
    document_ops(app)
    # Outermost, around routing too (app-level middleware runs after routing).
    app.asgi_handler = ServerTiming(
        Cors(AdminAudit(app.asgi_handler, lambda: app.state), lambda: app.state.services.cors)
    )
    return app
