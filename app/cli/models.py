"""``playerpulse models``: the model registry and rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from app.cli.common import INPUT_FILE, _features, _run_audited, _settings


@click.group()
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
