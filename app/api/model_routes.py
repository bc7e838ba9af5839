"""Model routes: uploads and rollouts (admin), predictions (read)."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post, put, route
from litestar.datastructures import UploadFile
from litestar.enums import HttpMethod, RequestEncodingType
from litestar.handlers import HTTPRouteHandler
from litestar.params import Body, Parameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_204_NO_CONTENT,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
)

from app import metrics
from app.domain.access import Principal, Role
from app.domain.guard import Guard, GuardError, GuardEvent
from app.domain.outcome import Outcome, OutcomeError
from app.domain.rollout import Rollout, RolloutError
from app.experiments import ExperimentService, Period, ReportUnavailable, UnknownModelName
from app.models.predictions import PredictionService, Served, UnknownPlayer
from app.models.registry import ModelInfo, ModelRegistry, UnknownModel
from app.models.runtime import ModelRejected, PredictionFailed
from app.profiles import Freshness
from app.settings import Settings

from .errors import ApiError
from .openapi import secured
from .read_your_writes import After, WaitMs, await_token

# -- bodies ----------------------------------------------------------------------------


FROM = "First day (UTC) of the period; it may not be after `to`."


class ModelVersionReply(msgspec.Struct):
    """The version an upload created."""

    name: str
    version: int


class PredictionReply(msgspec.Struct):
    """A model's outputs for one player, and which version answered.

    ``freshness``: of the profile the prediction was made on (null for explicit features).
    """

    model: str
    version: int
    outputs: dict[str, Any]
    player_id: str | None = None
    freshness: Freshness | None = None


class BatchPredictionReply(msgspec.Struct):
    """One answer per instance, in order."""

    predictions: list[PredictionReply]


class Instance(msgspec.Struct, forbid_unknown_fields=True):
    """Features to predict on; ``player_id`` only chooses the version of a split."""

    features: dict[str, Any]
    player_id: str | None = None


class PredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Explicit features (``features``), several instances, or players by id."""

    features: dict[str, Any] | None = None
    player_id: str | None = None
    instances: list[Instance] | None = None
    players: list[str] | None = None


class GuardBody(msgspec.Struct, forbid_unknown_fields=True):
    """Limits a serving version must keep over a window of its traffic (name one or both):
    a share of failed predictions (0 up to, not including, 1) and a p99 in ms."""

    max_error_rate: float | None = None
    max_p99_ms: float | None = None


class RolloutBody(msgspec.Struct, forbid_unknown_fields=True):
    """Versions by share of players (percent, summing to 100), a shadow and a guard."""

    split: dict[int, int]
    shadow: int | None = None
    guard: GuardBody | None = None


class OutcomeBody(msgspec.Struct, forbid_unknown_fields=True):
    """What counts as a model's outcome: an event type in a time after the exposure
    (``within``: 30m, 24h, 7d...), and its value: any, count or sum:FIELD (a props path)."""

    event: str
    within: str
    value: str = "any"


class ActivateBody(msgspec.Struct, forbid_unknown_fields=True):
    """The version to serve to every player."""

    version: int


class VersionInfo(msgspec.Struct):
    """A stored version."""

    version: int
    manifest: dict[str, Any]
    sha256: str
    size_bytes: int
    created_at: datetime


class RolloutReply(msgspec.Struct, omit_defaults=True):
    """Which versions serve, the shadow, and the guard (only when one is set)."""

    split: dict[int, int]
    shadow: int | None
    guard: dict[str, float] | None = None


class ModelReply(msgspec.Struct):
    """A model: its versions, its rollout, its outcome and what its guard did."""

    name: str
    versions: list[VersionInfo]
    rollout: RolloutReply | None
    outcome: OutcomeBody | None = None
    guard_events: list[GuardEvent] = msgspec.field(default_factory=list)


class ModelsReply(msgspec.Struct):
    """The game's models."""

    models: list[ModelReply]


def _model_reply(info: ModelInfo) -> ModelReply:
    return ModelReply(
        name=info.name,
        versions=[
            VersionInfo(v.version, v.manifest, v.sha256, v.size_bytes, v.created_at)
            for v in info.versions
        ],
        rollout=_rollout_reply(info.rollout) if info.rollout is not None else None,
        outcome=_outcome_reply(info.outcome) if info.outcome is not None else None,
        guard_events=info.guard_events,
    )


def _outcome_reply(outcome: Outcome) -> OutcomeBody:
    return OutcomeBody(event=outcome.event, within=outcome.within, value=outcome.value)


def _rollout_reply(rollout: Rollout) -> RolloutReply:
    guard = rollout.guard.as_dict() if rollout.guard is not None else None
    return RolloutReply(
        split=dict(sorted(rollout.split.items())), shadow=rollout.shadow, guard=guard
    )


def _reply(served: Served) -> PredictionReply:
    prediction = served.prediction
    return PredictionReply(
        model=prediction.model,
        version=prediction.version,
        outputs=prediction.outputs,
        player_id=served.player_id,
        freshness=served.freshness,
    )


# -- handlers --------------------------------------------------------------------------


async def upload_model(
    name: str,
    request: Request[Principal, Any, Any],
    registry: ModelRegistry,
    data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)],
    activate: bool = True,
) -> ModelVersionReply:
    """Upload a new version of ``name``: a file part ``model`` (ONNX) and ``manifest``.

    An optional part ``training_stats`` (JSON) holds the training set's bins per feature,
    which drift reports compare live features with.

    The new version serves every player unless ``activate=false`` (the first always does).
    """
    model = data.get("model")
    manifest = data.get("manifest")
    if model is None:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, "model: missing file part 'model'")
    if manifest is None:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, "manifest: missing part 'manifest'")
    raw = await model.read() if isinstance(model, UploadFile) else str(model).encode()
    manifest_raw = await manifest.read() if isinstance(manifest, UploadFile) else manifest
    stats = data.get("training_stats")
    stats_raw = await stats.read() if isinstance(stats, UploadFile) else stats
    try:
        version = await registry.upload(
            request.user.game, name, raw, manifest_raw, activate=activate, training_stats=stats_raw
        )
    except ModelRejected as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    return ModelVersionReply(name=name, version=version)


async def predict_for_player(
    player_id: str,
    name: str,
    request: Request[Principal, Any, Any],
    predictions: PredictionService,
    after: After = None,
    wait_ms: WaitMs = 1000,
) -> Response[PredictionReply]:
    """Run the version serving this player on the player's current features (with
    ``after``: once that ingest request's events for the player are folded).

    ``Server-Timing`` says how long the server took (profile read, model run, handler,
    and all of the application's handling of the request), the wait for ``after`` aside.
    """
    game = request.user.game
    if after is not None:
        await await_token(predictions.read_your_writes, game, player_id, after, wait_ms)
    started = time.perf_counter()
    try:
        served = await predictions.for_player(game, name, player_id)
    except PREDICTION_ERRORS as exc:
        raise _prediction_error(name, exc) from None
    return _timed(_reply(served), started, served.read_at)


async def predict(
    name: str,
    data: PredictRequest,
    request: Request[Principal, Any, Any],
    predictions: PredictionService,
) -> Response[PredictionReply | BatchPredictionReply]:
    """Predict on explicit features (to test a model), on several, or for several players.

    ``{"features": {...}}`` answers one prediction; ``{"instances": [{"features": ...},
    ...]}`` or ``{"players": ["p1", ...]}`` answer ``{"predictions": [...]}`` in order.
    Features absent from an instance are null (the manifest's defaults then apply).
    Several players are read in one query and predicted in one model run per version.
    """
    forms = [x is not None for x in (data.features, data.instances, data.players)]
    if sum(forms) != 1:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "body: give exactly one of 'features', 'instances' or 'players'",
        )
    game = request.user.game
    started = time.perf_counter()
    try:
        if data.features is not None:
            one = await predictions.on_features(game, name, data.features, data.player_id)
            return _timed(_reply(one), started)
        if data.instances is not None:
            rows = [(i.player_id, i.features) for i in data.instances]
            served = await predictions.on_instances(game, name, rows)
        else:
            served = await predictions.for_players(game, name, data.players or [])
    except PREDICTION_ERRORS as exc:
        raise _prediction_error(name, exc) from None
    return Response(BatchPredictionReply([_reply(s) for s in served]))


def _timed(reply: PredictionReply, started: float, read: float | None = None) -> Response[Any]:
    """The reply, with how long the handler took in ``Server-Timing`` (ms).

    ``profile``: reading and evaluating the profile; ``model``: choosing the version and
    running it; ``handler``: all of the handler. (``app``, all of the request in the
    application, routing and authentication included, is added by ``ServerTiming``.)
    """
    done = time.perf_counter()
    _TIMINGS.add(reply.model, reply.version, started, read, done)
    if read is None:
        timing = f"handler;dur={(done - started) * 1000:.3f}"
    else:
        timing = (
            f"handler;dur={(done - started) * 1000:.3f}, "
            f"profile;dur={(read - started) * 1000:.3f}, model;dur={(done - read) * 1000:.3f}"
        )
    return Response(reply, headers={"Server-Timing": timing})


class _Timings:
    """Prediction latencies, put into the histograms once per event-loop turn, after the
    turn's answers are written (each update of a metric writes a memory-mapped file)."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, int, float, float | None, float]] = []

    def add(
        self, model: str, version: int, started: float, read: float | None, done: float
    ) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._observe)
        self._pending.append((model, version, started, read, done))

    def _observe(self) -> None:
        pending, self._pending = self._pending, []
        metrics.observe_all(metrics.PREDICTION_SECONDS, [d - s for _, _, s, _, d in pending])
        by_version: dict[tuple[str, int], list[float]] = {}
        profile, model, total = [], [], []
        for name, version, started, read, done in pending:
            by_version.setdefault((name, version), []).append(done - started)
            if read is not None:
                profile.append(read - started)
                model.append(done - read)
                total.append(done - started)
        for (name, version), values in by_version.items():
            metrics.observe_all(metrics.PREDICTIONS_BY_VERSION.labels(name, str(version)), values)
        hops = metrics.PREDICTION_HOP_SECONDS
        for hop, values in (("profile", profile), ("model", model), ("total", total)):
            if values:
                metrics.observe_all(hops.labels(hop), values)


_TIMINGS = _Timings()


PREDICTION_ERRORS = (UnknownPlayer, UnknownModel, ModelRejected, PredictionFailed)


def _prediction_error(name: str, exc: Exception) -> ApiError:
    if isinstance(exc, UnknownPlayer):
        return ApiError(HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, UnknownModel):
        return ApiError(HTTP_404_NOT_FOUND, f"model {name!r} has no version in this game")
    if isinstance(exc, ModelRejected):
        return ApiError(
            HTTP_409_CONFLICT, f"model {name!r} no longer fits the features file: {exc}"
        )
    return ApiError(HTTP_422_UNPROCESSABLE_ENTITY, f"model {name!r}: {exc}")


async def list_models(
    request: Request[Principal, Any, Any], registry: ModelRegistry
) -> ModelsReply:
    """The game's models, with every version, its manifest and upload time, and rollouts."""
    infos = await registry.describe(request.user.game)
    return ModelsReply([_model_reply(i) for i in infos])


async def get_model(
    name: str, request: Request[Principal, Any, Any], registry: ModelRegistry
) -> ModelReply:
    """One model, with every version and its rollout."""
    infos = await registry.describe(request.user.game, name)
    if not infos:
        raise ApiError(HTTP_404_NOT_FOUND, f"model {name!r} has no version in this game")
    return _model_reply(infos[0])


async def activate_version(
    name: str, data: ActivateBody, request: Request[Principal, Any, Any], registry: ModelRegistry
) -> RolloutReply:
    """Serve one version to every player."""
    return await _change(registry.activate(request.user.game, name, data.version), name)


async def rollback(
    name: str, request: Request[Principal, Any, Any], registry: ModelRegistry
) -> RolloutReply:
    """Return to the rollout before the current one."""
    return await _change(registry.rollback(request.user.game, name), name)


async def set_rollout(
    name: str, data: RolloutBody, request: Request[Principal, Any, Any], registry: ModelRegistry
) -> RolloutReply:
    """Split players between versions (sticky per player) and set or clear a shadow."""
    try:
        guard = Guard(**msgspec.to_builtins(data.guard)) if data.guard is not None else None
        rollout = Rollout(dict(data.split), data.shadow, guard)
    except (RolloutError, GuardError) as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    return await _change(registry.set_rollout(request.user.game, name, rollout), name)


async def set_outcome(
    name: str, data: OutcomeBody, request: Request[Principal, Any, Any], registry: ModelRegistry
) -> OutcomeBody:
    """Set what counts as the model's outcome, for its experiment report."""
    try:
        outcome = Outcome.parse(data.event, data.within, data.value)
    except OutcomeError as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    try:
        await registry.set_outcome(request.user.game, name, outcome)
    except UnknownModel:
        raise ApiError(HTTP_404_NOT_FOUND, f"model {name!r} has no version in this game") from None
    return _outcome_reply(outcome)


def _period(start: date | None, end: date | None) -> Period:
    try:
        return Period.of_days(start, end)
    except ReportUnavailable as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None


async def _report(report: Any, name: str) -> dict[str, Any]:
    try:
        result = await report
    except UnknownModelName:
        raise ApiError(HTTP_404_NOT_FOUND, f"model {name!r} has no version in this game") from None
    except ReportUnavailable as exc:
        raise ApiError(HTTP_409_CONFLICT, str(exc)) from None
    built: dict[str, Any] = msgspec.to_builtins(result)
    return built


async def experiment_report(
    name: str,
    request: Request[Principal, Any, Any],
    experiments: ExperimentService,
    start: Annotated[date | None, Parameter(query="from", description=FROM)] = None,
    end: Annotated[date | None, Parameter(query="to")] = None,
    control: Annotated[int | None, Parameter(ge=1, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    """Exposed players, outcomes and rates per version; uplift against the control with
    its 95% interval and p-value; the sample-ratio check; calibration of classifiers."""
    period = _period(start, end)
    return await _report(experiments.experiment(request.user.game, name, period, control), name)


async def drift_report(
    name: str,
    request: Request[Principal, Any, Any],
    experiments: ExperimentService,
    start: Annotated[date | None, Parameter(query="from", description=FROM)] = None,
    end: Annotated[date | None, Parameter(query="to")] = None,
    version: Annotated[int | None, Parameter(ge=1, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    """PSI of each feature of logged predictions against the training statistics."""
    period = _period(start, end)
    return await _report(experiments.drift(request.user.game, name, period, version), name)


async def _change(change: Any, name: str) -> RolloutReply:
    try:
        rollout: Rollout = await change
    except UnknownModel:
        raise ApiError(HTTP_404_NOT_FOUND, f"model {name!r} has no version in this game") from None
    except RolloutError as exc:
        raise ApiError(HTTP_409_CONFLICT, str(exc)) from None
    return _rollout_reply(rollout)


def _refuse_large_uploads(limit: int) -> Any:
    """Refuse an upload by its Content-Length, before reading any of it (422, as every
    invalid upload; a body without a length is cut off at the limit with 413)."""

    async def before(request: Request[Any, Any, Any]) -> None:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(
                HTTP_422_UNPROCESSABLE_ENTITY,
                f"model: the upload is {int(length)} bytes; models may be at most "
                f"{limit - 1024 * 1024} bytes (PLAYERPULSE_MODEL_MAX_BYTES)",
            )

    return before


def model_routes(settings: Settings) -> list[HTTPRouteHandler]:
    """Route handlers for models: admin ones, then predictions."""
    return [*_admin_routes(settings), *_report_routes(), *_prediction_routes()]


def options_route(path: str, methods: str) -> HTTPRouteHandler:
    """An explicit OPTIONS for a path served by several handlers: Litestar's own one is
    made with the first handler registered and lists only its methods in ``Allow``."""

    async def options() -> Response[None]:
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": methods})

    return route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False)(options)


def _admin_routes(settings: Settings) -> list[HTTPRouteHandler]:
    """Uploads, rollouts, outcomes and reports (admin keys)."""
    upload_limit = settings.model_max_bytes + 1024 * 1024  # room for the manifest part
    path = "/v1/admin/models/{name:str}"
    tags = {"tags": ["models"]}
    return [
        options_route(path, "GET, OPTIONS, POST"),
        post(
            path,
            status_code=HTTP_201_CREATED,
            request_max_body_size=upload_limit,
            before_request=_refuse_large_uploads(upload_limit),
            summary="Upload a model version",
            **secured(Role.ADMIN, 400, 413, 422, **tags),
        )(upload_model),
        get(
            "/v1/admin/models",
            summary="List models, versions and rollouts",
            **secured(Role.ADMIN, **tags),
        )(list_models),
        get(path, summary="One model", **secured(Role.ADMIN, 400, 404, **tags))(get_model),
        post(
            f"{path}/activate",
            status_code=HTTP_200_OK,
            summary="Serve one version",
            **secured(Role.ADMIN, 400, 404, 409, **tags),
        )(activate_version),
        post(
            f"{path}/rollback",
            status_code=HTTP_200_OK,
            summary="Back to the previous rollout",
            **secured(Role.ADMIN, 400, 404, 409, **tags),
        )(rollback),
        put(
            f"{path}/rollout",
            summary="Split traffic and set a shadow",
            **secured(Role.ADMIN, 400, 404, 409, 422, **tags),
        )(set_rollout),
        put(
            f"{path}/outcome",
            summary="Set the outcome experiment reports count",
            **secured(Role.ADMIN, 400, 404, 422, **tags),
        )(set_outcome),
    ]


def _report_routes() -> list[HTTPRouteHandler]:
    """Experiment and drift reports (admin keys)."""
    path = "/v1/admin/models/{name:str}"
    tags = {"tags": ["models"]}
    return [
        get(
            f"{path}/experiment",
            summary="Experiment report: outcomes per version against the control",
            **secured(Role.ADMIN, 400, 404, 409, 422, **tags),
        )(experiment_report),
        get(
            f"{path}/drift",
            summary="Drift report: PSI of live features against the training set",
            **secured(Role.ADMIN, 400, 404, 409, 422, **tags),
        )(drift_report),
    ]


def _prediction_routes() -> list[HTTPRouteHandler]:
    """Predictions (read keys)."""
    tags = {"tags": ["predictions"]}
    return [
        get(
            "/v1/players/{player_id:str}/predictions/{name:str}",
            summary="Predict for a player",
            **secured(Role.READ, 400, 404, 409, 422, 504, **tags),
        )(predict_for_player),
        post(
            "/v1/models/{name:str}/predict",
            status_code=HTTP_200_OK,
            summary="Predict on explicit features, or for several players",
            **secured(Role.READ, 400, 404, 409, 422, **tags),
        )(predict),
    ]


STRICT_BODIES: list[type[msgspec.Struct]] = [
    ActivateBody,
    GuardBody,
    Instance,
    OutcomeBody,
    PredictRequest,
    RolloutBody,
]
"""Request bodies that refuse unknown fields (``additionalProperties: false``)."""
