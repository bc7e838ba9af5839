"""The OpenAPI document, exact: every status a route answers, the real error body, the
request bodies routes read themselves, and which routes need a key.

Written once here and used by every route module: :func:`secured` (a role's guard, the
security requirement and the statuses it adds), :func:`documented` (the statuses of an
open route), and :func:`finish` (what Litestar cannot infer, set on the built document).
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)

from app.domain.access import Role
from app.settings import Settings

from .auth import ROLE_OPT
from .read_your_writes import TOKEN_PATTERN


class ErrorReply(msgspec.Struct):
    """Every error: what went wrong (``error``) and, for some, more (``detail``: null, a
    string, or an object naming the offending fields)."""

    error: str
    detail: Any


STATUS_TEXT = {
    400: "Invalid request: a parameter or the body does not fit (the error says where)",
    401: "No API key, or an unknown one",
    403: "The key's role may not use this route",
    404: "Not found (the error says what)",
    409: "Conflicts with the current state (the error says which)",
    413: "The body, or the batch, exceeds its limit",
    415: "Unsupported Content-Encoding (gzip, zstd or none)",
    422: "Well-formed but refused (the error says why)",
    429: "This key's rate limit: nothing accepted; retry after Retry-After seconds",
    500: "The server failed (logged); nothing to do but retry later",
    503: "Unavailable for now (overloaded, or the broker or PostgreSQL is down): nothing "
    "accepted; retry after Retry-After",
    504: "The events of `after` were not folded within `wait_ms`",
    507: "A disk of the service is below PLAYERPULSE_DISK_MIN_FREE: nothing accepted; retry "
    "after Retry-After",
}


OPERATION_IDS = {
    "health": "getHealth",
    "metrics_page": "getMetrics",
    "dashboard_page": "getDashboardPage",
    "dashboard_data": "getDashboardData",
    "rollback": "rollbackModel",
    "experiment_report": "getExperimentReport",
    "drift_report": "getDriftReport",
    "predict": "predict",
    "put_cors": "setCors",
}
"""Operation ids that the handler's name would not give well (the rest: its name in
camelCase)."""


def operation_id(handler: HTTPRouteHandler, method: Any, path: list[Any]) -> str:
    """A short, stable ``operationId`` (``sendEvents``, ``getProfile``, ...): what client
    generators name their functions after. Unique: checked by the tests."""
    name = handler.handler_name
    if name in OPERATION_IDS:
        return OPERATION_IDS[name]
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Response specs with the error body for ``statuses`` (and 500, which any route
    answers if it fails)."""
    return {
        status: ResponseSpec(
            data_container=ErrorReply, description=STATUS_TEXT[status], generate_examples=False
        )
        for status in sorted({*statuses, 500})
    }


def secured(role: Role, *statuses: int, **more: Any) -> dict[str, Any]:
    """Keyword arguments of a route that needs a key of ``role``: the role (which the
    authentication middleware checks), its security requirement and its error statuses
    (401 and 403 added, and 503: a key is checked in PostgreSQL, which may be down)."""
    return {
        "opt": {ROLE_OPT: role},
        "security": [{"apiKey": []}],
        "responses": errors(401, 403, 503, *statuses),
        **more,
    }


def documented(*statuses: int, **more: Any) -> dict[str, Any]:
    """Keyword arguments of an open route (no key): its error statuses."""
    return {"responses": errors(*statuses), **more}


def _definition(kind: type[Any]) -> dict[str, Any]:
    """msgspec's JSON schema of a struct, inline (it has no nested structs)."""
    schema = msgspec.json.schema(kind)
    name = schema["$ref"].rsplit("/", 1)[-1]
    definition: dict[str, Any] = schema["$defs"][name]
    return definition


_DAY = "[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
DATE_PATTERN = f"^{_DAY}$"
DATE_TIME_PATTERN = (
    f"^{_DAY}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{{1,6}})?"
    "(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$"
)
"""``format`` is only an annotation in OpenAPI 3.1: these patterns say what the service
parses (a subset of RFC 3339: days up to the 28th, offsets up to 13 hours)."""


def _with_patterns(node: Any) -> Any:
    """``node`` with a pattern next to every ``format: date-time`` or ``date``."""
    if isinstance(node, dict):
        out = {key: _with_patterns(value) for key, value in node.items()}
        if out.get("format") == "date-time":
            out["pattern"] = DATE_TIME_PATTERN
        elif out.get("format") == "date":
            out["pattern"] = DATE_PATTERN
        return out
    if isinstance(node, list):
        return [_with_patterns(value) for value in node]
    return node


def _no_nul(schema: dict[str, Any]) -> dict[str, Any]:
    """A string schema that also refuses NUL characters (PostgreSQL text cannot hold them)."""
    return {**schema, "pattern": "^[^\\u0000]*$"}


def _event_schema() -> dict[str, Any]:
    from app.domain.events import IncomingEvent

    event = _definition(IncomingEvent)
    for name in ("event_id", "player_id", "type"):
        event["properties"][name] = _no_nul(event["properties"][name])
    return event


def _segment_message(single: str | None) -> dict[str, Any]:
    from app.domain.segment import SegmentMessage

    message: dict[str, Any] = _with_patterns(_definition(SegmentMessage))
    message["properties"]["messageId"] = _no_nul(message["properties"]["messageId"])
    user = message["properties"]["userId"]
    user["anyOf"] = [_no_nul(o) if o.get("type") == "string" else o for o in user["anyOf"]]
    if single is not None:
        message["properties"]["type"] = {"const": single}
        # A message names its player: userId (not null) or anonymousId (not null).
        message["anyOf"] = [
            {"required": ["userId"], "properties": {"userId": {"not": {"type": "null"}}}},
            {
                "required": ["anonymousId"],
                "properties": {
                    "anonymousId": _no_nul({"type": "string"}),
                    "userId": {"type": "null"},
                },
            },
        ]
        if single == "track":
            message["required"] = [*message["required"], "event"]
            message["properties"]["event"] = _no_nul(
                {"type": "string", "minLength": 1, "maxLength": 64}
            )
    return message


def _bodies(settings: Settings) -> dict[str, dict[str, Any]]:
    """The JSON bodies of the routes that decode their body themselves, by path.

    Batch items are validated one by one: an invalid one is rejected in the reply (its
    index and why), the rest accepted; so an item may be any JSON value, and the event's
    shape is documented as the first choice.
    """
    most = settings.max_batch_events
    events = {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "maxItems": most,
                "items": {"anyOf": [{"$ref": "#/components/schemas/Event"}, {}]},
                "description": "Each event is validated on its own: an invalid one is "
                "listed in `rejected`, the others are accepted.",
            }
        },
    }
    batch = {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {
                "type": "array",
                "maxItems": most,
                "items": {"anyOf": [_segment_message(None), {}]},
            },
            "sentAt": {
                "type": ["string", "null"],
                "format": "date-time",
                "pattern": DATE_TIME_PATTERN,
            },
        },
    }
    bodies = {"/v1/events": events, "/v1/batch": batch}
    for single in ("track", "identify", "page", "screen"):
        bodies[f"/v1/{single}"] = _segment_message(single)
    return bodies


EVENT_DESCRIPTION = (
    "One player event: a unique `event_id` (a repeat is counted once), the player, its "
    "type, when it happened (`ts`, RFC 3339 with an offset) and optional `props`."
)

_SENT_AT = Parameter(
    name="X-Sent-At",
    param_in="header",
    required=False,
    description="When the device sent the batch (RFC 3339 with an offset): each event's "
    "`ts` is corrected by how far the device clock is off the server's.",
    # A plain string with the pattern: client generators refuse a date-time header.
    schema=Schema(type=OpenAPIType.STRING, pattern=DATE_TIME_PATTERN),
)


_UPLOAD = {
    "type": "object",
    "required": ["model", "manifest"],
    "properties": {
        "model": {"type": "string", "format": "binary", "description": "The ONNX file."},
        "manifest": {
            "type": "string",
            "description": "JSON: the model's inputs (features) and outputs.",
        },
        "training_stats": {
            "type": "string",
            "description": "JSON: the training set's bins per feature (for drift reports).",
        },
    },
}

_GUARD = {
    "max_error_rate": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1},
    "max_p99_ms": {"type": ["number", "null"], "exclusiveMinimum": 0},
}
"""A guard's limits (checked by the rollout, 422 naming the limit); it names one or both."""

_OUTCOME = {
    "event": {"type": "string", "minLength": 1, "maxLength": 64},
    "within": {"type": "string", "pattern": "^[1-9][0-9]*[smhd]$"},
    "value": {
        "type": "string",
        "pattern": "^(any|count|sum:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$",
        "default": "any",
    },
}
"""An outcome's rules (checked when it is set, 422 naming the field)."""

_ABSENT = {"type": "null", "description": "Absent or null in this form."}
_PLAYER_ID = {
    "type": ["string", "null"],
    "description": "Chooses the version of a split (features form only).",
}
_PREDICT_FORMS: dict[str, tuple[str, dict[str, Any]]] = {
    "PredictOnFeatures": (
        "features",
        {"type": "object", "additionalProperties": {}, "description": "Feature values by name."},
    ),
    "PredictOnInstances": (
        "instances",
        {"type": "array", "items": {"$ref": "#/components/schemas/Instance"}},
    ),
    "PredictForPlayers": (
        "players",
        {"type": "array", "items": {"type": "string"}, "description": "Player ids."},
    ),
}
"""A prediction request names exactly one of features, instances or players (not null):
three complete object schemas, so that client generators can model each form."""


def _predict_forms() -> dict[str, dict[str, Any]]:
    names = [name for name, _ in _PREDICT_FORMS.values()]
    forms = {}
    for title, (name, schema) in _PREDICT_FORMS.items():
        properties = {other: _ABSENT for other in names if other != name}
        forms[title] = {
            "type": "object",
            "title": title,
            "required": [name],
            "properties": {name: schema, "player_id": _PLAYER_ID, **properties},
            "additionalProperties": False,
        }
    return forms


def _fix_components(schemas: dict[str, Schema], strict: list[type[msgspec.Struct]]) -> None:
    for kind in strict:
        schema = schemas.get(kind.__name__)
        if schema is not None:
            schema.additional_properties = False
    if "PredictRequest" in schemas:
        schemas.update(cast(Any, _predict_forms()))
        schemas["PredictRequest"] = Schema(
            description="Exactly one of `features`, `instances` or `players`.",
            one_of=[Reference(f"#/components/schemas/{title}") for title in _PREDICT_FORMS],
        )
    guard = schemas.get("GuardBody")
    if guard is not None:
        guard.properties = cast(Any, _GUARD)
        guard.any_of = cast(
            Any, [{"required": [name], "properties": {name: {"type": "number"}}} for name in _GUARD]
        )
    outcome = schemas.get("OutcomeBody")
    if outcome is not None:
        outcome.properties = cast(Any, _OUTCOME)
    rollout = schemas.get("RolloutBody")
    if rollout is not None and rollout.properties:
        split = rollout.properties["split"]
        if isinstance(split, Schema):
            split.property_names = Schema(pattern="^[0-9]+$")
            split.description = "Percent of players by version (keys are version numbers)."


def _fix_parameters(document: Any) -> None:
    """Patterns for date and date-time query parameters, and for tokens (``after``)."""
    for item in (document.paths or {}).values():
        for operation in (item.get, item.post, item.put, item.delete):
            for parameter in (operation.parameters if operation else None) or []:
                schema = getattr(parameter, "schema", None)
                if parameter.name == "after" and isinstance(schema, Schema):
                    for option in schema.one_of or [schema]:
                        if isinstance(option, Schema) and option.type == OpenAPIType.STRING:
                            option.pattern = TOKEN_PATTERN
                for option in [schema, *((schema.one_of or []) if schema else [])]:
                    if isinstance(option, Schema) and option.format is not None:
                        pattern = _with_patterns({"format": option.format.value}).get("pattern")
                        option.pattern = pattern or option.pattern


def finish(app: Litestar, settings: Settings, strict: list[type[msgspec.Struct]]) -> None:
    """What Litestar does not infer, set on the app's (cached) document.

    ``strict``: the body structs that refuse unknown fields (``additionalProperties:
    false``). The routes reading their body themselves get its schema; ``/v1/events`` its
    ``X-Sent-At`` header.
    """
    document = app.openapi_schema
    if document.components and document.components.schemas:
        _fix_components(cast(Any, document.components.schemas), strict)
        document.components.schemas["Event"] = cast(
            Any, {**_event_schema(), "title": "Event", "description": EVENT_DESCRIPTION}
        )
    _fix_parameters(document)
    upload = (document.paths or {}).get("/v1/admin/models/{name}")
    if upload is not None and upload.post is not None:
        upload.post.request_body = RequestBody(
            content={"multipart/form-data": OpenAPIMediaType(schema=_UPLOAD)},  # type: ignore[arg-type]
            required=True,
        )
    for path, body in _bodies(settings).items():
        item = (document.paths or {}).get(path)
        if item is None or item.post is None:
            continue
        item.post.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=body)},  # type: ignore[arg-type]
            required=True,
        )
        if path == "/v1/events":
            item.post.parameters = [*(item.post.parameters or []), _SENT_AT]
