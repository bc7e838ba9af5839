"""The ``playerpulse`` command line: one module per command group, registered here."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="playerpulse")
def main() -> None:
    """PlayerPulse: live player events in, real-time profiles and predictions out.

    Configuration comes from PLAYERPULSE_* environment variables (every one is listed
    in the documentation's configuration reference).
    """


def _register() -> None:
    from app.cli.analytics import analytics
    from app.cli.audit import audit
    from app.cli.backup import backup
    from app.cli.deploy import service, worker
    from app.cli.fold import failed_events, replay
    from app.cli.keys import keys
    from app.cli.lake import lake
    from app.cli.models import models
    from app.cli.players import players
    from app.cli.serve import serve

    for command in (serve, keys, audit, backup, analytics, replay, failed_events, models):
        main.add_command(command)
    main.add_command(players)
    main.add_command(lake)
    main.add_command(service)
    main.add_command(worker)


_register()
