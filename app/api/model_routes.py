"""Model routes: uploads and rollouts (admin), predictions (read)."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post, put
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.handlers import HTTPRouteHandler
from litestar.params import Body, Parameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
)

from app import metrics
from app.bootstrap import Services
from app.domain.access import Principal, Role
from app.domain.guard import Guard, GuardError
from app.domain.outcome import Outcome, OutcomeError
from app.domain.rollout import Rollout, RolloutError
from app.experiments import Period, ReportUnavailable, UnknownModelName
from app.models.registry import ModelInfo, Prediction, UnknownModel
from app.models.runtime import ModelRejected, PredictionFailed
from app.settings import Settings

from .auth import requires
from .errors import ApiError
from .read_your_writes import After, WaitMs, await_token

# -- bodies ----------------------------------------------------------------------------


class ModelVersionReply(msgspec.Struct):
    """The version an upload created."""

    name: str
    version: int


class PredictionReply(msgspec.Struct):
    """A model's outputs for one player, and which version answered."""

    model: str
    version: int
    outputs: dict[str, Any]
    player_id: str | None = None


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
    """Limits a serving version must keep over a window of its traffic."""

    max_error_rate: float | None = None
    max_p99_ms: float | None = None


class RolloutBody(msgspec.Struct, forbid_unknown_fields=True):
    """Versions by share of players (percent, summing to 100), a shadow and a guard."""

    split: dict[int, int]
    shadow: int | None = None
    guard: GuardBody | None = None


class OutcomeBody(msgspec.Struct, forbid_unknown_fields=True):
    """What counts as a model's outcome: an event type in a time after the exposure."""

    event: str
    within: str
    value: str = "any"


class GuardEventReply(msgspec.Struct):
    """A version a guard took out of the split."""

    version: int
    reason: str
    requests: int
    errors: int
    p99_ms: float
    split_before: dict[int, int]
    split_after: dict[int, int]
    at: datetime | None


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
    guard_events: list[GuardEventReply] = msgspec.field(default_factory=list)


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
        guard_events=[GuardEventReply(**asdict(e)) for e in info.guard_events],
    )


def _outcome_reply(outcome: Outcome) -> OutcomeBody:
    return OutcomeBody(event=outcome.event, within=outcome.within, value=outcome.value)


def _rollout_reply(rollout: Rollout) -> RolloutReply:
    guard = rollout.guard.as_dict() if rollout.guard is not None else None
    return RolloutReply(
        split=dict(sorted(rollout.split.items())), shadow=rollout.shadow, guard=guard
    )


def _reply(prediction: Prediction, player_id: str | None = None) -> PredictionReply:
    return PredictionReply(
        model=prediction.model,
        version=prediction.version,
        outputs=prediction.outputs,
        player_id=player_id,
    )


# -- handlers --------------------------------------------------------------------------


async def upload_model(
    name: str,
    request: Request[Principal, Any, Any],
    services: Services,
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
        version = await services.registry.upload(
            request.user.game, name, raw, manifest_raw, activate=activate, training_stats=stats_raw
        )
    except ModelRejected as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    return ModelVersionReply(name=name, version=version)


async def predict_for_player(
    player_id: str,
    name: str,
    request: Request[Principal, Any, Any],
    services: Services,
    after: After = None,
    wait_ms: WaitMs = 1000,
) -> Response[PredictionReply]:
    """Run the version serving this player on the player's current features (with
    ``after``: once that ingest request's events for the player are folded).

    ``Server-Timing`` says how long the server took (profile read, model run, handler,
    and all of the application's handling of the request), the wait for ``after`` aside.
    """
    game = request.user.game
    await await_token(services, game, player_id, after, wait_ms)
    started = time.perf_counter()
    profile = await services.profiles.get(game, player_id)
    if profile is None:
        raise ApiError(HTTP_404_NOT_FOUND, f"player {player_id!r} has no events in this game")
    read = time.perf_counter()
    prediction = await _predict(services, game, name, profile.features, player_id)
    return _timed(_reply(prediction, player_id), started, read)


async def predict(
    name: str, data: PredictRequest, request: Request[Principal, Any, Any], services: Services
) -> Response[PredictionReply] | BatchPredictionReply:
    """Predict on explicit features (to test a model), on several, or for several players.

    ``{"features": {...}}`` answers one prediction; ``{"instances": [{"features": ...},
    ...]}`` or ``{"players": ["p1", ...]}`` answer ``{"predictions": [...]}`` in order.
    Features absent from an instance are null (the manifest's defaults then apply).
    """
    forms = [x is not None for x in (data.features, data.instances, data.players)]
    if sum(forms) != 1:
        raise ApiError(
            HTTP_422_UNPROCESSABLE_ENTITY,
            "body: give exactly one of 'features', 'instances' or 'players'",
        )
    game = request.user.game
    if data.features is not None:
        started = time.perf_counter()
        prediction = await _predict(services, game, name, data.features, data.player_id)
        return _timed(_reply(prediction, data.player_id), started)
    if data.instances is not None:
        answers = [
            _reply(await _predict(services, game, name, i.features, i.player_id), i.player_id)
            for i in data.instances
        ]
        return BatchPredictionReply(answers)
    answers = []
    for player_id in data.players or []:
        profile = await services.profiles.get(game, player_id)
        if profile is None:
            raise ApiError(HTTP_404_NOT_FOUND, f"player {player_id!r} has no events in this game")
        answers.append(
            _reply(await _predict(services, game, name, profile.features, player_id), player_id)
        )
    return BatchPredictionReply(answers)


def _timed(
    reply: PredictionReply, started: float, read: float | None = None
) -> Response[PredictionReply]:
    """The reply, with how long the handler took in ``Server-Timing`` (ms).

    ``profile``: reading and evaluating the profile; ``model``: choosing the version and
    running it; ``handler``: all of the handler. (``app``, all of the request in the
    application, routing and authentication included, is added by ``ServerTiming``.)
    """
    done = time.perf_counter()
    metrics.PREDICTION_SECONDS.observe(done - started)
    metrics.PREDICTIONS_BY_VERSION.labels(reply.model, str(reply.version)).observe(done - started)
    parts = [f"handler;dur={(done - started) * 1000:.3f}"]
    if read is not None:
        hops = metrics.PREDICTION_HOP_SECONDS
        hops.labels("profile").observe(read - started)
        hops.labels("model").observe(done - read)
        hops.labels("total").observe(done - started)
        parts += [
            f"profile;dur={(read - started) * 1000:.3f}",
            f"model;dur={(done - read) * 1000:.3f}",
        ]
    return Response(reply, headers={"Server-Timing": ", ".join(parts)})


async def _predict(
    services: Services, game: str, name: str, features: dict[str, Any], player_id: str | None
) -> Prediction:
    try:
        return await services.registry.predict(game, name, features, player_id)
    except UnknownModel:
        raise ApiError(HTTP_404_NOT_FOUND, f"model {name!r} has no version in this game") from None
    except ModelRejected as exc:
        raise ApiError(
            HTTP_409_CONFLICT, f"model {name!r} no longer fits the features file: {exc}"
        ) from None
    except PredictionFailed as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, f"model {name!r}: {exc}") from None


async def list_models(request: Request[Principal, Any, Any], services: Services) -> ModelsReply:
    """The game's models, with every version, its manifest and upload time, and rollouts."""
    infos = await services.registry.describe(request.user.game)
    return ModelsReply([_model_reply(i) for i in infos])


async def get_model(
    name: str, request: Request[Principal, Any, Any], services: Services
) -> ModelReply:
    """One model, with every version and its rollout."""
    infos = await services.registry.describe(request.user.game, name)
    if not infos:
        raise ApiError(HTTP_404_NOT_FOUND, f"model {name!r} has no version in this game")
    return _model_reply(infos[0])


async def activate_version(
    name: str, data: ActivateBody, request: Request[Principal, Any, Any], services: Services
) -> RolloutReply:
    """Serve one version to every player."""
    return await _change(services.registry.activate(request.user.game, name, data.version), name)


async def rollback(
    name: str, request: Request[Principal, Any, Any], services: Services
) -> RolloutReply:
    """Return to the rollout before the current one."""
    return await _change(services.registry.rollback(request.user.game, name), name)


async def set_rollout(
    name: str, data: RolloutBody, request: Request[Principal, Any, Any], services: Services
) -> RolloutReply:
    """Split players between versions (sticky per player) and set or clear a shadow."""
    try:
        guard = Guard(**msgspec.to_builtins(data.guard)) if data.guard is not None else None
        rollout = Rollout(dict(data.split), data.shadow, guard)
    except (RolloutError, GuardError) as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    return await _change(services.registry.set_rollout(request.user.game, name, rollout), name)


async def set_outcome(
    name: str, data: OutcomeBody, request: Request[Principal, Any, Any], services: Services
) -> OutcomeBody:
    """Set what counts as the model's outcome, for its experiment report."""
    try:
        outcome = Outcome.parse(data.event, data.within, data.value)
    except OutcomeError as exc:
        raise ApiError(HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    try:
        await services.registry.set_outcome(request.user.game, name, outcome)
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
    services: Services,
    start: Annotated[date | None, Parameter(query="from")] = None,
    end: Annotated[date | None, Parameter(query="to")] = None,
    control: int | None = None,
) -> dict[str, Any]:
    """Exposed players, outcomes and rates per version; uplift against the control with
    its 95% interval and p-value; the sample-ratio check; calibration of classifiers."""
    period = _period(start, end)
    return await _report(
        services.experiments.experiment(request.user.game, name, period, control), name
    )


async def drift_report(
    name: str,
    request: Request[Principal, Any, Any],
    services: Services,
    start: Annotated[date | None, Parameter(query="from")] = None,
    end: Annotated[date | None, Parameter(query="to")] = None,
    version: int | None = None,
) -> dict[str, Any]:
    """PSI of each feature of logged predictions against the training statistics."""
    period = _period(start, end)
    return await _report(services.experiments.drift(request.user.game, name, period, version), name)


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
    """Route handlers for models."""
    upload_limit = settings.model_max_bytes + 1024 * 1024  # room for the manifest part
    admin: dict[str, Any] = {"guards": [requires(Role.ADMIN)], "tags": ["models"]}
    return [
        post(
            "/v1/admin/models/{name:str}",
            status_code=HTTP_201_CREATED,
            request_max_body_size=upload_limit,
            before_request=_refuse_large_uploads(upload_limit),
            summary="Upload a model version",
            **admin,
        )(upload_model),
        get("/v1/admin/models", summary="List models, versions and rollouts", **admin)(list_models),
        get("/v1/admin/models/{name:str}", summary="One model", **admin)(get_model),
        post(
            "/v1/admin/models/{name:str}/activate",
            status_code=HTTP_200_OK,
            summary="Serve one version",
            **admin,
        )(activate_version),
        post(
            "/v1/admin/models/{name:str}/rollback",
            status_code=HTTP_200_OK,
            summary="Back to the previous rollout",
            **admin,
        )(rollback),
        put(
            "/v1/admin/models/{name:str}/rollout",
            summary="Split traffic and set a shadow",
            **admin,
        )(set_rollout),
        put(
            "/v1/admin/models/{name:str}/outcome",
            summary="Set the outcome experiment reports count",
            **admin,
        )(set_outcome),
        get(
            "/v1/admin/models/{name:str}/experiment",
            summary="Experiment report: outcomes per version against the control",
            **admin,
        )(experiment_report),
        get(
            "/v1/admin/models/{name:str}/drift",
            summary="Drift report: PSI of live features against the training set",
            **admin,
        )(drift_report),
        get(
            "/v1/players/{player_id:str}/predictions/{name:str}",
            guards=[requires(Role.READ)],
            tags=["predictions"],
            summary="Predict for a player",
        )(predict_for_player),
        post(
            "/v1/models/{name:str}/predict",
            guards=[requires(Role.READ)],
            status_code=HTTP_200_OK,
            tags=["predictions"],
            summary="Predict on explicit features, or for several players",
        )(predict),
    ]
