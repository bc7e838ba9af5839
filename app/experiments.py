"""Experiment and drift reports of a model: settings from PostgreSQL, data from the lake.

Used by the admin routes and by ``playerpulse analytics report experiment|drift``.
DuckDB work runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analytics import drift as drift_stats
from app.analytics import experiment as stats
from app.analytics.location import LakeLocation
from app.analytics.query import connect
from app.db.model_versions import ModelRepository
from app.domain.outcome import Outcome
from app.domain.predictions import ProbabilitySpec

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)


class ReportUnavailable(ValueError):
    """The report cannot be made yet (no outcome, no statistics); the message says why."""


class UnknownModelName(LookupError):
    """No version of this model was uploaded for this game."""


@dataclass(frozen=True, slots=True)
class Period:
    """Exposures from ``start`` (inclusive) to ``end`` (exclusive), UTC."""

    start: datetime = EARLIEST
    end: datetime = LATEST

    @classmethod
    def of_days(cls, first: date | None, last: date | None) -> Period:
        """From the start of ``first`` to the end of ``last`` (UTC days); open if None."""
        if first and last and first > last:
            raise ReportUnavailable("from: the first day is after the last (to)")
        start = datetime.combine(first, time(), UTC) if first else EARLIEST
        end = datetime.combine(last + timedelta(days=1), time(), UTC) if last else LATEST
        return cls(start, end)


@dataclass(frozen=True, slots=True)
class DriftReport:
    """PSI per feature of one version, flagged above the threshold."""

    model: str
    version: int
    threshold: float
    rows: list[drift_stats.FeatureDrift]
    flagged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ExperimentService:
    """Reports on whether a model's versions helped, and whether live features drifted."""

    def __init__(
        self, engine: AsyncEngine, lake: LakeLocation, repository: ModelRepository | None = None
    ) -> None:
        self.engine = engine
        self.lake = lake
        self.repository = repository or ModelRepository()

    async def experiment(
        self, game: str, name: str, period: Period, control: int | None = None
    ) -> stats.ExperimentReport:
        """Exposures and outcomes per version, against the control; SRM; calibration."""
        async with self.engine.connect() as conn:
            versions = await self.repository.versions(conn, game, name)
            if not versions:
                raise UnknownModelName(name)
            outcome = await self.repository.outcome(conn, game, name)
            history = await self.repository.rollout_history(conn, game, name)
        if outcome is None:
            raise ReportUnavailable(
                f"model {name!r} has no outcome: set one with PUT /v1/admin/models/{name}/outcome "
                "or `playerpulse models outcome`"
            )
        if control is not None and control not in {v.version for v in versions}:
            raise ReportUnavailable(f"control: model {name!r} has no version {control}")
        specs = {
            v.version: msgspec.convert(v.manifest["probability"], type=ProbabilitySpec)
            for v in versions
            if v.manifest.get("probability")
        }
        arms, probabilities = await asyncio.to_thread(
            self._experiment_data, game, name, outcome, period, specs
        )
        return assemble(name, outcome, arms, probabilities, history, control)

    def _experiment_data(
        self,
        game: str,
        name: str,
        outcome: Outcome,
        period: Period,
        specs: dict[int, ProbabilitySpec],
    ) -> tuple[list[stats.ArmCounts], dict[int, Any]]:
        conn = connect(self.lake)
        try:
            exposure = stats.Exposure(game, name, outcome, period.start, period.end)
            arms = stats.exposure_counts(conn, exposure)
            probabilities = {}
            if outcome.kind == "any" and specs:
                probabilities = stats.exposure_probabilities(conn, exposure, specs)
            return arms, probabilities
        finally:
            conn.close()

    async def drift(
        self, game: str, name: str, period: Period, version: int | None = None
    ) -> DriftReport:
        """PSI of each feature of ``version`` (default: the newest with training statistics)."""
        async with self.engine.connect() as conn:
            versions = await self.repository.versions(conn, game, name)
            if not versions:
                raise UnknownModelName(name)
            training = await self.repository.training_stats(conn, game, name)
        if not training:
            raise ReportUnavailable(
                f"model {name!r} has no version uploaded with training statistics "
                "(playerpulse models upload ... --training train.parquet)"
            )
        version = max(training) if version is None else version
        if version not in training:
            raise ReportUnavailable(
                f"version: {version} of {name!r} has no training statistics; "
                f"versions with them: {sorted(training)}"
            )
        bins = drift_stats.parse_stats(training[version]).features
        live = await asyncio.to_thread(self._live, game, name, version, sorted(bins), period)
        rows = [drift_stats.feature_drift(f, bins[f], live[f]) for f in sorted(bins)]
        warnings = []
        if rows and rows[0].live == 0:
            warnings.append(f"no logged predictions of version {version} in the period")
        return DriftReport(
            name,
            version,
            drift_stats.PSI_FLAG,
            rows,
            [r.feature for r in rows if r.flagged],
            warnings,
        )

    def _live(
        self, game: str, name: str, version: int, features: list[str], period: Period
    ) -> dict[str, Any]:
        conn = connect(self.lake)
        try:
            return drift_stats.live_features(
                conn, game, name, version, features, period.start, period.end
            )
        finally:
            conn.close()


def assemble(
    name: str,
    outcome: Outcome,
    arms: list[stats.ArmCounts],
    probabilities: dict[int, Any],
    history: list[tuple[datetime, Any]],
    control: int | None,
) -> stats.ExperimentReport:
    """The report from the lake's counts and the model's rollout history."""
    warnings: list[str] = []
    exposed = {a.version for a in arms if a.players}
    if control is None and exposed:
        serving = set(history[-1][1].serving) & exposed if history else set()
        control = min(serving or exposed)
    elif control is not None and control not in exposed:
        warnings.append(f"control v{control} exposed no player in the period")
    splits = [(at, dict(rollout.split)) for at, rollout in history]
    shares = stats.expected_shares(splits, exposed)
    srm = None
    if shares is not None and len(exposed) > 1:
        srm = stats.sample_ratio(arms, shares)
        if srm.warning:
            warnings.append(srm.warning)
    elif len(exposed) > 1:
        warnings.append(
            "no rollout served exactly the exposed versions: the sample ratio is not checked"
        )
    calibration = [
        stats.calibrate(v, predicted, actual)
        for v, (predicted, actual) in sorted(probabilities.items())
        if len(predicted)
    ]
    described = {"event": outcome.event, "within": outcome.within, "value": outcome.value}
    rows = stats.arm_rows(arms, control, shares)
    return stats.ExperimentReport(name, described, control, rows, srm, calibration, warnings)
