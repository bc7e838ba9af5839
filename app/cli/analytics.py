"""``playerpulse analytics``: SQL, reports and training sets over the lake."""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from app.cli.common import (
    _DAY,
    _FORMATS,
    INPUT_FILE,
    OUTPUT_FILE,
    _lake_errors,
    _progress,
    _settings,
)


@click.group()
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


@click.command("report")
@click.argument(
    "name",
    type=click.Choice(["dau", "mau", "retention", "funnel", "arpdau", "experiment", "drift"]),
)
@click.option("--game", required=True, help="The game to report on.")
@click.option("--model", default=None, help="experiment, drift: the model.")
@click.option(
    "--control",
    type=int,
    default=None,
    help="experiment: the version the others are compared with [the lowest serving].",
)
@click.option(
    "--version",
    "model_version",
    type=int,
    default=None,
    help="drift: the version [the newest with training statistics].",
)
@click.option("--from", "start", type=_DAY, default=None, help="First day (UTC), YYYY-MM-DD.")
@click.option("--to", "end", type=_DAY, default=None, help="Last day (UTC), YYYY-MM-DD.")
@click.option("--steps", default=None, help="funnel: event types in order, comma-separated.")
@click.option(
    "--event",
    "purchase_event",
    default=None,
    help="arpdau: the purchase event type [setting revenue_event, 'purchase'].",
)
@click.option(
    "--field",
    "revenue_field",
    default=None,
    help="arpdau: props field of the amount [setting revenue_field, 'amount'].",
)
@click.option(
    "--format",
    "fmt",
    type=_FORMATS,
    default="table",
    show_default=True,
    help="json prints one JSON array of row objects.",
)
@click.option(
    "--plot",
    type=OUTPUT_FILE,
    default=None,
    help="Also draw the report to this PNG file (needs matplotlib).",
)
def report(
    name: str,
    game: str,
    model: str | None,
    control: int | None,
    model_version: int | None,
    start: datetime | None,
    end: datetime | None,
    steps: str | None,
    purchase_event: str | None,
    revenue_field: str | None,
    fmt: str,
    plot: Path | None,
) -> None:
    """Reports: dau, mau (30 days), retention (day 1/7/30 by first-seen cohort), funnel, arpdau;
    experiment (outcomes per model version) and drift (PSI of live features)."""
    if name in ("experiment", "drift"):
        if not model:
            raise click.UsageError(f"the {name} report needs --model")
        first, last = (start.date() if start else None), (end.date() if end else None)
        _model_report(name, game, model, first, last, control, model_version, fmt, plot)
        return
    from app.analytics.location import LakeLocation, connect_lake
    from app.analytics.query import render
    from app.analytics.reports import ReportError, ReportRequest, run_report
    from app.analytics.reports import plot as draw

    settings = _settings("warning")
    request = ReportRequest(
        name=name,
        game=game,
        start=start.date() if start else None,
        end=end.date() if end else None,
        steps=tuple(s.strip() for s in steps.split(",") if s.strip()) if steps else (),
        purchase_event=str(purchase_event or settings.revenue_event),
        revenue_field=str(revenue_field or settings.revenue_field),
    )
    try:
        with _lake_errors():
            conn = connect_lake(LakeLocation.of(settings))
            try:
                result = run_report(conn, request)
            finally:
                conn.close()
        if plot is not None:
            draw(result, name, plot)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    render(result, fmt, sys.stdout)


@click.command("training-set")
@click.option("--game", required=True, help="The game whose events feed the features.")
@click.option(
    "--labels",
    "labels_path",
    type=INPUT_FILE,
    required=True,
    help="CSV or Parquet with player_id, ts (RFC 3339; UTC if no offset) and label columns.",
)
@click.option(
    "--out",
    "out_path",
    type=OUTPUT_FILE,
    required=True,
    help="CSV or Parquet (by extension): the label rows plus one column per feature.",
)
@click.option(
    "--features",
    "features_path",
    type=INPUT_FILE,
    default=None,
    help="Features file [PLAYERPULSE_FEATURES].",
)
@click.option(
    "--exclude-late-arrivals",
    is_flag=True,
    help="Also leave out events received after the label's ts (as served then).",
)
@click.option("--show-sql", is_flag=True, help="Print the generated SQL and exit.")
def training_set(
    game: str,
    labels_path: Path,
    out_path: Path,
    features_path: Path | None,
    exclude_late_arrivals: bool,
    show_sql: bool,
) -> None:
    """Point-in-time training set: every feature of each label row as of its ts.

    No event dated after ts counts; events dated before ts count even if they arrived
    later (unless --exclude-late-arrivals).
    """
    from app.analytics.location import LakeLocation
    from app.analytics.training import TrainingSetError, build_training_set, training_sql
    from app.domain.features import FeatureFileError, load_features

    settings = _settings("warning")
    try:
        features = load_features(features_path or settings.features_path)
    except FeatureFileError as exc:
        raise click.ClickException(str(exc)) from None
    if show_sql:
        sql = training_sql(features, exclude_late_arrivals=exclude_late_arrivals)
        click.echo(f"-- distinct events, per-feature columns\n{sql.events.strip()};\n")
        click.echo(f"-- features per label row\n{sql.features.strip()};")
        return
    try:
        with _lake_errors(), _progress("computing features") as advance:
            stats = build_training_set(
                LakeLocation.of(settings),
                features,
                game,
                labels_path,
                out_path,
                exclude_late_arrivals=exclude_late_arrivals,
                progress=advance,
            )
    except TrainingSetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"wrote {stats.labels} rows ({stats.players} players, {stats.events} events, "
        f"{stats.poison} refused as the fold refuses them) to {out_path} "
        f"in {stats.seconds:.1f}s",
        err=True,
    )


def _model_report(
    name: str,
    game: str,
    model: str,
    first: date | None,
    last: date | None,
    control: int | None,
    version: int | None,
    fmt: str,
    plot: Path | None,
) -> None:
    """The experiment or drift report of a model (settings from the database)."""
    from app.bootstrap import CommandServices, run_command
    from app.experiments import Period, ReportUnavailable, UnknownModelName

    async def run(services: CommandServices) -> Any:
        period = Period.of_days(first, last)
        if name == "experiment":
            return await services.experiments.experiment(game, model, period, control)
        return await services.experiments.drift(game, model, period, version)

    try:
        with _lake_errors():
            result = run_command(_settings("warning"), run)
    except UnknownModelName:
        raise click.ClickException(f"model {model!r} has no version in game {game!r}") from None
    except ReportUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if plot is not None:
        _plot_model_report(name, result, plot)
    _print_model_report(name, result, fmt)


def _plot_model_report(name: str, result: Any, path: Path) -> None:
    if name != "experiment":
        raise click.UsageError("--plot draws the experiment report only")
    from app.analytics.experiment import plot_experiment

    try:
        plot_experiment(result, path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _print_model_report(name: str, result: Any, fmt: str) -> None:
    import msgspec

    from app.analytics.query import QueryResult, render

    if fmt == "json":
        click.echo(msgspec.json.encode(result, enc_hook=str).decode())
        return
    if name == "experiment":
        columns, rows = result.table()
        render(QueryResult(columns, [_rounded(r) for r in rows]), fmt, sys.stdout)
        if fmt == "table":
            _print_experiment_extras(result)
    else:
        rows = [(r.feature, round(r.psi, 4), r.flagged, r.live, r.training) for r in result.rows]
        render(
            QueryResult(["feature", "psi", "flagged", "live", "training"], rows), fmt, sys.stdout
        )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)


def _rounded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(round(v, 4) if isinstance(v, float) else v for v in row)


def _print_experiment_extras(report: Any) -> None:
    from app.analytics.query import QueryResult, render

    outcome = report.outcome
    click.echo(
        f"outcome: {outcome['event']} within {outcome['within']} ({outcome['value']}); "
        f"control: v{report.control}"
    )
    if report.srm is not None and report.srm.p_value is not None:
        verdict = "ok" if report.srm.ok else "MISMATCH"
        click.echo(f"sample ratio: chi-square p = {report.srm.p_value:.4g} ({verdict})")
    if report.calibration:
        rows = [
            (
                c.version,
                c.players,
                round(c.brier, 4),
                round(c.log_loss, 4),
                None if c.auc is None else round(c.auc, 4),
            )
            for c in report.calibration
        ]
        render(
            QueryResult(["version", "players", "brier", "log_loss", "auc"], rows),
            "table",
            sys.stdout,
        )
        bins = [
            (
                c.version,
                f"{b.low:.1f}-{b.high:.1f}",
                b.players,
                round(b.mean_predicted, 4),
                round(b.observed_rate, 4),
            )
            for c in report.calibration
            for b in c.reliability
        ]
        render(
            QueryResult(["version", "bin", "players", "mean_predicted", "observed_rate"], bins),
            "table",
            sys.stdout,
        )


analytics.add_command(report)
analytics.add_command(training_set)
