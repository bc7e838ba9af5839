"""The ``playerpulse`` command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from app.analytics.commands import INPUT_FILE
from app.domain.access import Role
from app.log import configure_logging
from app.settings import Settings, SettingsError

if TYPE_CHECKING:
    from app.domain.features import FeatureSet


def _settings(log_level: str | None = None) -> Settings:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_format, log_level or settings.log_level)
    return settings


def _features(settings: Settings) -> FeatureSet:
    """The features file, or a clear error naming what is wrong with it."""
    from app.domain.features import FeatureFileError, load_features

    try:
        return load_features(settings.features_path)
    except FeatureFileError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="playerpulse")
def main() -> None:
    """PlayerPulse: live player events in, real-time profiles and predictions out.

    Configuration comes from PLAYERPULSE_* environment variables (see the README).
    """


@main.command()
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


@main.group()
def keys() -> None:
    """API keys."""


def _duration(text: str | None, option: str) -> float | None:
    """Seconds of a duration such as 90d, 24h or 30m (None stays None)."""
    from app.domain.features import parse_window

    if text is None:
        return None
    try:
        return float(parse_window(text))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: a positive integer followed by s, m, h or d, such as 90d",
            param_hint=option,
        ) from None


def _run_audited(
    settings: Settings,
    action: Any,
    *,
    what: str,
    game: str | None,
    target: str | Any,
    pool_size: int = 1,
) -> Any:
    """Run ``action(services)`` and record it in the audit trail (outcome ok, or the
    error); ``target`` may be a function of the result (the new key's id, say)."""
    from app.audit import os_actor
    from app.bootstrap import CommandServices, run_command
    from app.domain.audit import AuditEntry

    async def run(services: CommandServices) -> Any:
        try:
            result = await action(services)
        except Exception as exc:
            shown = target if isinstance(target, str) else ""
            await services.audit.record(
                AuditEntry(game, os_actor(), what, shown, f"error: {type(exc).__name__}")
            )
            raise
        entry_game, shown = game, target
        if not isinstance(target, str):
            entry_game, shown = target(result)
        await services.audit.record(AuditEntry(entry_game, os_actor(), what, shown, "ok"))
        return result

    return run_command(settings, run, pool_size=pool_size)


@keys.command("create")
@click.option("--game", required=True, help="The game the key belongs to.")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in Role]),
    help="ingest: send events; read: profiles and predictions; admin: everything.",
)
@click.option("--name", default=None, help="What the key is for (shown in listings).")
@click.option("--expires", default=None, help="Lifetime, such as 90d; default: none.")
def keys_create(game: str, role: str, name: str | None, expires: str | None) -> None:
    """Print a new API key, alone on one line."""
    from app.bootstrap import CommandServices
    from app.keys import check_game

    try:
        check_game(game)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--game") from None
    expires_in = _duration(expires, "--expires")

    async def create(services: CommandServices) -> Any:
        return await services.keys.issue(game, Role(role), name=name, expires_in_s=expires_in)

    try:
        key, _stored = _run_audited(
            _settings("warning"),
            create,
            what="keys.create",
            game=game,
            target=lambda result: (game, f"key:{result[1].id}"),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(key)


def _key_row(key: Any) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return None if value is None else value.isoformat(timespec="seconds")

    return {
        "id": key.id,
        "game": key.game,
        "role": key.role,
        "name": key.name,
        "created": when(key.created_at),
        "last_used": when(key.last_used_at),
        "expires": when(key.expires_at),
        "revoked": when(key.revoked_at),
        "replaced_by": key.replaced_by,
    }


@keys.command("list")
@click.option("--game", default=None, help="Only this game's keys.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def keys_list(game: str | None, fmt: str) -> None:
    """Every key: id, game, role, name, created, last used, expires, revoked (no secret)."""
    import msgspec

    from app.bootstrap import CommandServices, run_command

    async def fetch(services: CommandServices) -> list[dict[str, Any]]:
        return [_key_row(k) for k in await services.keys.list(game)]

    rows = run_command(_settings("warning"), fetch)
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    from rich.console import Console
    from rich.table import Table

    columns = ("id", "game", "role", "name", "created", "last_used", "expires", "revoked")
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console(width=200).print(table)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID now: every server refuses it within a second."""
    from app.bootstrap import CommandServices
    from app.keys import UnknownKey

    async def revoke(services: CommandServices) -> Any:
        return await services.keys.revoke(key_id)

    try:
        key = _run_audited(
            _settings("warning"),
            revoke,
            what="keys.revoke",
            game=None,
            target=lambda k: (k.game, f"key:{k.id}"),
        )
    except UnknownKey:
        raise click.ClickException(f"no key with id {key_id!r}") from None
    click.echo(f"revoked {key.id} ({key.game}, {key.role})")


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--overlap", default="24h", show_default=True, help="How long the old key keeps working."
)
def keys_rotate(key_id: str, overlap: str) -> None:
    """Print a new key replacing KEY_ID; the old one is revoked after the overlap."""
    from app.bootstrap import CommandServices
    from app.keys import UnknownKey

    overlap_s = 0.0 if overlap in ("0", "0s") else _duration(overlap, "--overlap")
    assert overlap_s is not None

    async def rotate(services: CommandServices) -> Any:
        return await services.keys.rotate(key_id, overlap_s=overlap_s)

    try:
        key, new, old = _run_audited(
            _settings("warning"),
            rotate,
            what="keys.rotate",
            game=None,
            target=lambda r: (r[2].game, f"key:{r[2].id} -> key:{r[1].id}"),
        )
    except UnknownKey:
        raise click.ClickException(f"no key with id {key_id!r}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key)
    click.echo(
        f"{old.id} keeps working until {old.revoked_at.isoformat(timespec='seconds')}; "
        f"the new key's id is {new.id}",
        err=True,
    )


@main.group()
def audit() -> None:
    """The audit trail of admin actions (API and command line), hash-chained."""


@audit.command("list")
@click.option("--game", default=None, help="Only this game's records.")
@click.option("--after", default=0, type=click.IntRange(min=0), help="Records after this seq.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def audit_list(game: str | None, after: int, limit: int, fmt: str) -> None:
    """Audit records, oldest first."""
    from dataclasses import asdict

    import msgspec

    from app.bootstrap import CommandServices, run_command

    async def fetch(services: CommandServices) -> list[dict[str, Any]]:
        records = await services.audit.list(game, after=after, limit=limit)
        return [asdict(r) | {"at": r.at.isoformat()} for r in records]

    rows = run_command(_settings("warning"), fetch)
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    from rich.console import Console
    from rich.table import Table

    columns = ("seq", "at", "game", "actor", "action", "target", "outcome")
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console(width=200).print(table)


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain; exit 1 naming the first record that does not hold."""
    from app.bootstrap import CommandServices, run_command

    async def verify(services: CommandServices) -> Any:
        return await services.audit.verify()

    checked, broken = run_command(_settings("warning"), verify)
    if broken is not None:
        click.echo(f"audit chain broken at record {broken.seq}: {broken.reason}", err=True)
        sys.exit(1)
    click.echo(f"audit chain intact: {checked} records")


@main.group()
def backup() -> None:
    """Backups: the database snapshot, the features file, the lake, with checksums."""


def _backup_error(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@backup.command("create")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def backup_create(directory: Path) -> None:
    """Back up into DIRECTORY (the server may run; a later backup into the same
    directory copies only the lake files it does not hold yet)."""
    from app.backup import BackupError, create_backup
    from app.bootstrap import command_database

    settings = _settings("warning")
    try:
        with command_database(settings) as url:
            summary = create_backup(_with_brokers(settings), url, directory)
    except BackupError as exc:
        raise _backup_error(exc) from None

    _record_done(settings, "backup.create", str(directory.resolve()))
    rows = ", ".join(f"{t} {n}" for t, n in summary.tables.items() if n)
    click.echo(
        f"backup in {directory}: {summary.files} files, {summary.bytes} bytes "
        f"({summary.copied} lake files copied now); rows: {rows}"
    )


def _with_brokers(settings: Settings) -> Settings:
    """The settings, with the embedded broker's address if one runs on the data dir."""
    if settings.kafka_brokers is not None:
        return settings
    from dataclasses import replace

    from app.backup import running_embedded_broker

    brokers = running_embedded_broker(settings.data_dir)
    return settings if brokers is None else replace(settings, kafka_brokers=brokers)


@backup.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def backup_verify(directory: Path) -> None:
    """Check every checksum, restore into a scratch PostgreSQL and compare row counts."""
    from app.backup import BackupError, verify_backup

    _settings("warning")
    try:
        summary = verify_backup(directory)
    except BackupError as exc:
        click.echo(f"backup {directory} is damaged: {exc}", err=True)
        sys.exit(1)
    rows = sum(summary.tables.values())
    click.echo(
        f"backup {directory} verified: {summary.files} files match their checksums, "
        f"{len(summary.tables)} tables restore with their {rows} rows"
    )


@backup.command("restore")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def backup_restore(directory: Path) -> None:
    """Restore DIRECTORY into an empty data dir (or empty database), server stopped."""
    from app.backup import BackupError, restore_backup

    settings = _settings("warning")
    try:
        summary, notes = restore_backup(settings, directory)
    except BackupError as exc:
        raise _backup_error(exc) from None

    _record_done(settings, "backup.restore", str(directory.resolve()))
    click.echo(
        f"restored {directory} into {settings.data_dir}: {sum(summary.tables.values())} rows, "
        f"{summary.copied} lake files"
    )
    for note in notes:
        click.echo(note)


@main.group()
def analytics() -> None:
    """Questions to the Parquet lake (DuckDB)."""


@analytics.command("query")
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="json prints one JSON array of row objects.",
)
def analytics_query(sql: str, fmt: str) -> None:
    """Run SQL over the lake; the view `events` holds every event once."""
    from app.analytics.location import LakeLocation
    from app.analytics.query import LakeQueryError, render, run_query

    settings = _settings("warning")
    try:
        result = run_query(LakeLocation.of(settings), sql)
    except LakeQueryError as exc:
        raise click.ClickException(str(exc)) from None
    render(result, fmt, sys.stdout)


@main.command()
def replay() -> None:
    """Rebuild every profile from the lake (stop the service first)."""
    from rich.progress import Progress

    from app.bootstrap import CommandServices
    from app.replay import ServiceRunning, replay_alone

    settings = _settings("warning")
    features = _features(settings)

    async def run(services: CommandServices) -> str:
        with Progress(transient=False) as bar:
            task = bar.add_task("rebuilding profiles", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            stats = await replay_alone(
                services.engine,
                features,
                services.location,
                dedup_horizon_s=settings.dedup_horizon,
                progress=advance,
            )
        return (
            f"rebuilt {stats.players} profiles from {stats.events} events in {stats.seconds:.1f}s"
        )

    try:
        click.echo(
            _run_audited(settings, run, what="replay", game=None, target="profiles", pool_size=2)
        )
    except ServiceRunning as exc:
        raise click.ClickException(str(exc)) from None


@main.command("failed-events")
@click.option("--game", default=None, help="Only this game's (default: every game's).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def failed_events(game: str | None, limit: int, fmt: str) -> None:
    """Events the fold could not apply, newest first, with the reason."""
    import msgspec

    from app.bootstrap import CommandServices, run_command

    async def fetch(services: CommandServices) -> list[dict[str, object]]:
        rows = await services.failed_events.recent(game, limit=limit)
        return [
            {
                "id": r.id,
                "game": r.game,
                "player_id": r.player_id,
                "event_id": r.event_id,
                "reason": r.reason,
                "failed_at": r.failed_at.isoformat(),
                "record": r.payload.decode(errors="replace"),
            }
            for r in rows
        ]

    rows = run_command(_settings("warning"), fetch)
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "game", "player_id", "event_id", "failed_at", "reason")
    for row in rows:
        table.add_row(
            *(str(row[c]) for c in ("id", "game", "player_id", "event_id", "failed_at", "reason"))
        )
    Console().print(table)


@main.group()
def models() -> None:
    """Model versions and rollouts (running servers follow within a second)."""


def _with_registry(action: Any, audit: tuple[str, str, str] | None = None) -> Any:
    """Run ``action(registry)`` against the configured database; with ``audit`` (action,
    game, target), record it in the audit trail."""
    from app.bootstrap import CommandServices, run_command
    from app.domain.rollout import RolloutError
    from app.models.registry import ModelRejected, UnknownModel

    settings = _settings("warning")
    _features(settings)  # a clear error before the database is touched

    async def run(services: CommandServices) -> Any:
        return await action(services.registry)

    try:
        if audit is not None:
            what, game, target = audit
            return _run_audited(
                settings, lambda s: action(s.registry), what=what, game=game, target=target
            )
        return run_command(settings, run)
    except UnknownModel as exc:
        raise click.ClickException(f"model {exc} has no version in this game") from None
    except (RolloutError, ModelRejected) as exc:
        raise click.ClickException(str(exc)) from None


def _show_rollout(rollout: Any) -> None:
    split = ", ".join(f"v{v}: {p}%" for v, p in sorted(rollout.split.items()))
    shadow = f"; shadow v{rollout.shadow}" if rollout.shadow is not None else ""
    guard = f"; guard {rollout.guard.as_dict()}" if rollout.guard is not None else ""
    click.echo(f"serving {split}{shadow}{guard}")


@models.command("list")
@click.option("--game", required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def models_list(game: str, fmt: str) -> None:
    """Every model of a game: versions, manifests, upload times, rollout."""
    import msgspec

    infos = _with_registry(lambda registry: registry.describe(game))
    if fmt == "json":
        click.echo(msgspec.json.encode(infos, enc_hook=str).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "version", "uploaded", "bytes", "serving", "inputs")
    for info in infos:
        rollout = info.rollout
        for v in info.versions:
            share = rollout.split.get(v.version, 0) if rollout else 0
            role = (
                f"{share}%"
                if share
                else ("shadow" if rollout and rollout.shadow == v.version else "")
            )
            table.add_row(
                info.name,
                str(v.version),
                v.created_at.isoformat(timespec="seconds"),
                str(v.size_bytes),
                role,
                str(v.manifest.get("inputs")),
            )
    Console().print(table)


@models.command("activate")
@click.option("--game", required=True)
@click.argument("name")
@click.argument("version", type=int)
def models_activate(game: str, name: str, version: int) -> None:
    """Serve VERSION of NAME to every player."""
    _show_rollout(
        _with_registry(
            lambda registry: registry.activate(game, name, version),
            ("models.activate", game, f"model:{name} v{version}"),
        )
    )


@models.command("rollback")
@click.option("--game", required=True)
@click.argument("name")
def models_rollback(game: str, name: str) -> None:
    """Return NAME to its previous rollout."""
    _show_rollout(
        _with_registry(
            lambda registry: registry.rollback(game, name),
            ("models.rollback", game, f"model:{name}"),
        )
    )


@models.command("upload")
@click.option("--game", required=True)
@click.argument("name")
@click.argument("model_path", type=INPUT_FILE)
@click.option(
    "--manifest",
    "manifest_path",
    required=True,
    type=INPUT_FILE,
    help="The manifest (JSON): inputs, defaults, probability.",
)
@click.option(
    "--training",
    "training_path",
    type=INPUT_FILE,
    default=None,
    help="The training set (Parquet or CSV, one column per input feature): its bins per "
    "feature are stored for drift reports.",
)
@click.option(
    "--training-stats",
    "stats_path",
    type=INPUT_FILE,
    default=None,
    help='Or those bins as JSON: {"features": {NAME: {"edges": [...], "counts": [...]}}}.',
)
@click.option("--activate/--no-activate", default=True, help="Serve it to every player.")
def models_upload(
    game: str,
    name: str,
    model_path: Path,
    manifest_path: Path,
    training_path: Path | None,
    stats_path: Path | None,
    activate: bool,
) -> None:
    """Upload MODEL_PATH (ONNX) as the next version of NAME; print the version."""
    import msgspec

    from app.domain.drift import DriftError
    from app.models.runtime import ModelRejected, parse_manifest

    if training_path and stats_path:
        raise click.UsageError("give --training or --training-stats, not both")
    manifest = manifest_path.read_bytes()
    stats: bytes | None = stats_path.read_bytes() if stats_path else None
    if training_path is not None:
        from app.analytics.drift import stats_from_table

        try:
            inputs = [f for names in parse_manifest(manifest).inputs.values() for f in names]
            stats = msgspec.json.encode(stats_from_table(training_path, sorted(set(inputs))))
        except (ModelRejected, DriftError) as exc:
            raise click.ClickException(str(exc)) from None
    raw = model_path.read_bytes()
    version = _with_registry(
        lambda registry: registry.upload(
            game, name, raw, manifest, activate=activate, training_stats=stats
        ),
        ("models.upload", game, f"model:{name}"),
    )
    click.echo(f"{name} version {version}")


@models.command("outcome")
@click.option("--game", required=True)
@click.argument("name")
@click.option("--event", required=True, help="The event type that is the outcome, e.g. purchase.")
@click.option("--within", required=True, help="How long after the exposure it counts: 24h, 7d.")
@click.option("--value", default="any", show_default=True, help="any, count or sum:FIELD.")
def models_outcome(game: str, name: str, event: str, within: str, value: str) -> None:
    """Set what counts as NAME's outcome in experiment reports."""
    from app.domain.outcome import Outcome, OutcomeError

    try:
        outcome = Outcome.parse(event, within, value)
    except OutcomeError as exc:
        raise click.BadParameter(str(exc)) from None
    _with_registry(
        lambda registry: registry.set_outcome(game, name, outcome),
        ("models.outcome", game, f"model:{name}"),
    )
    click.echo(f"{name}: outcome {outcome.event} within {outcome.within} ({outcome.value})")


@models.command("rollout")
@click.option("--game", required=True)
@click.argument("name")
@click.option("--split", "split_text", required=True, help="VERSION=PERCENT,... e.g. 1=90,2=10")
@click.option("--shadow", type=int, default=None, help="A version to run and log, never answer.")
@click.option(
    "--max-error-rate", type=float, default=None, help="Guard: most failed predictions (0.01)."
)
@click.option("--max-p99-ms", type=float, default=None, help="Guard: slowest p99 latency (ms).")
def models_rollout(
    game: str,
    name: str,
    split_text: str,
    shadow: int | None,
    max_error_rate: float | None,
    max_p99_ms: float | None,
) -> None:
    """Split NAME's players between versions (sticky per player), with an optional shadow.

    With a guard, a version breaking it over a window of traffic leaves the split.
    """
    from app.domain.guard import Guard, GuardError
    from app.domain.rollout import Rollout, RolloutError

    try:
        guard = None
        if max_error_rate is not None or max_p99_ms is not None:
            guard = Guard(max_error_rate, max_p99_ms)
    except GuardError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-error-rate/--max-p99-ms") from None
    try:
        split = {int(v): int(p) for v, p in (part.split("=", 1) for part in split_text.split(","))}
        rollout = Rollout(split, shadow, guard)
    except (ValueError, RolloutError) as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from None
    _show_rollout(
        _with_registry(
            lambda registry: registry.set_rollout(game, name, rollout),
            ("models.rollout", game, f"model:{name} {split_text}"),
        )
    )


@main.group()
def players() -> None:
    """Player privacy: erasure and export."""


def _with_privacy(action: Any, audit: tuple[str, str, str], *, profiles: bool = False) -> Any:
    """Run ``action(privacy)`` and record it (action, game, target) in the audit trail;
    with ``profiles``, the service can also read profiles."""
    from app.bootstrap import CommandServices

    async def run(services: CommandServices) -> Any:
        privacy = await services.privacy_with_profiles() if profiles else services.privacy
        return await action(privacy)

    what, game, target = audit
    return _run_audited(_settings("warning"), run, what=what, game=game, target=target, pool_size=2)


def _record_done(settings: Settings, what: str, target: str) -> None:
    """Record an action the command line completed outside the services (a backup)."""
    from app.audit import os_actor
    from app.bootstrap import run_command
    from app.domain.audit import AuditEntry

    entry = AuditEntry(None, os_actor(), what, target, "ok")

    async def record(services: Any) -> None:
        await services.audit.record(entry)

    run_command(settings, record)


def _audited_player(game: str, player_id: str) -> str:
    """How the audit trail names a player: the pseudonym an erasure keeps, never the id
    (the trail is append-only, and an erasure must leave the id nowhere)."""
    from app.domain.privacy import player_key

    return f"player-sha256:{player_key(game, player_id)}"


@players.command("erase")
@click.option("--game", required=True)
@click.argument("player_id")
@click.option("--wait", "wait_s", type=float, default=0.0, help="Seconds to wait for done.")
def players_erase(game: str, player_id: str, wait_s: float) -> None:
    """Erase PLAYER_ID everywhere (carried out by `serve`); print the receipt as JSON."""
    import time

    import msgspec

    from app.privacy import receipt

    async def erase(privacy: Any) -> Any:
        erasure = await privacy.erase(game, player_id)
        deadline = time.monotonic() + wait_s
        while erasure.status != "done" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            erasure = await privacy.erasure(game, erasure.id)
        return receipt(erasure, player_id)

    erased = _with_privacy(erase, ("players.erase", game, _audited_player(game, player_id)))
    click.echo(msgspec.json.encode(erased).decode())


@players.command("export")
@click.option("--game", required=True)
@click.argument("player_id")
def players_export(game: str, player_id: str) -> None:
    """Print everything held about PLAYER_ID as one JSON document."""

    async def export(privacy: Any) -> None:
        async for piece in privacy.export(game, player_id):
            sys.stdout.buffer.write(piece)
        sys.stdout.buffer.write(b"\n")

    _with_privacy(export, ("players.export", game, _audited_player(game, player_id)), profiles=True)


@players.command("reuse")
@click.option("--game", required=True)
@click.argument("player_id")
def players_reuse(game: str, player_id: str) -> None:
    """Lift the done erasure of PLAYER_ID: its events count again from now on."""
    from app.privacy import ErasurePending, NoErasure

    try:
        lifted = _with_privacy(
            lambda privacy: privacy.allow_reuse(game, player_id),
            ("players.reuse", game, _audited_player(game, player_id)),
        )
    except ErasurePending:
        raise click.ClickException("the player's erasure is still pending") from None
    except NoErasure:
        raise click.ClickException(f"no erasure in force for {player_id!r}") from None
    click.echo(f"lifted {lifted} erasure(s): {player_id} may be used again")


from app.analytics.commands import lake, report, training_set  # noqa: E402

main.add_command(lake)
analytics.add_command(report)
analytics.add_command(training_set)

from app.deploy_cli import service, worker  # noqa: E402

main.add_command(service)
main.add_command(worker)
