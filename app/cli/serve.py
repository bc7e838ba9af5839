"""``playerpulse serve``: the service."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.cli.common import _settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes sharing the port and the fold [default: PLAYERPULSE_WORKERS, "
    "else one per CPU core].",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate (chain): serve HTTPS [default: PLAYERPULSE_TLS_CERT].",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM private key of --tls-cert [default: PLAYERPULSE_TLS_KEY].",
)
def serve(
    host: str, port: int, workers: int | None, tls_cert: Path | None, tls_key: Path | None
) -> None:
    """Migrate, start everything, and serve until SIGINT/SIGTERM (SIGHUP: upgrade the
    workers one at a time)."""
    from dataclasses import replace

    from app.server import serve as run

    settings = _settings()
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None:
            raise click.UsageError("--tls-cert and --tls-key go together")
        settings = replace(settings, tls_cert=tls_cert, tls_key=tls_key)
    sys.exit(run(settings, host, port, workers))
