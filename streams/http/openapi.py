"""The OpenAPI 3.1 description of the whole HTTP API, served at `GET /openapi.json`.

The Dutch API Design Rules ask for one (API-51: "publish OAS document at a standard
location"). The request and answer shapes of subscriptions, replays and volgindicaties come
from the pydantic models the handlers validate with, so they cannot drift apart; the rest is
written here and kept true by tests/streams/http/test_openapi.py (every route is described,
nothing described is missing, and a schemathesis run finds every answer as documented).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any, Final

from pydantic.json_schema import models_json_schema

from streams.operations.replay_log import ReplayStatus
from streams.operations.replay_request import ReplayRequest
from streams.routing.grants import CODES as GRANT_CODES
from streams.routing.subscriptions import Subscription

__all__ = ["OPENAPI_PATH", "document"]

OPENAPI_PATH: Final = "/openapi.json"
_REF: Final = "#/components/schemas/{model}"
# What the server sets on a subscription: a request may not choose them (ignored if sent).
_SERVER_FIELDS: Final = ("id", "owner", "purpose", "created", "status", "signingSecret")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = _json(schema)
    return out


_RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "whole seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _errors(*statuses: int) -> dict[str, Any]:
    """The error answers of SPEC §4 (`Error`), with 401 and 429 on every authenticated route."""
    why = {
        400: "invalid input: `code` says which, `errors` lists every field-level error",
        401: "no or an unknown bearer token",
        403: "the client may not do this (its grant, role or quota; a subscription beyond "
        "its owner's grant: types, fields, volgindicaties)",
        404: "no such subscription (or not yours)",
        408: "the body did not arrive within `http.body_timeout_s` (`body_timeout`)",
        409: "refused in the current state",
        413: "the body is too large",
        415: "unsupported content type",
        429: "over the client's request rate (`rate_limited`) or, for a replay, too many"
        " replays at once (`replay_limit`): wait `Retry-After` seconds",
        503: "Kafka (or the audit trail: `audit_unavailable`) is unavailable or did not"
        " confirm: nothing was accepted; try again",
    }
    answers = {str(s): _answer(why[s], _ref("Error")) for s in sorted({401, 429, *statuses})}
    answers["429"]["headers"] = _RETRY_AFTER
    return answers


def _id_param() -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_TIME: Final = {"type": "string", "format": "date-time"}
# `limits.max_page`, by default 1000: a larger limit is a 400
_LIMIT: Final = {"type": "integer", "minimum": 1, "maximum": 1000}
_TEXT: Final = {"type": "string"}
_AUDIT_RECORD: Final = {
    "type": "object",
    "description": 'one change or operator action (README, "Audit trail"); no personal data',
    "required": ["action", "actor", "at"],
    "properties": {
        "action": {"type": "string"},
        "actor": {"type": "string"},
        "at": _TIME,
        "via": {"type": "string", "enum": ["http", "cli"]},
        "target": {"type": ["string", "null"]},
        "outcome": {"type": "string", "enum": ["ok", "refused", "failed"]},
        "code": {"type": ["string", "null"]},
        "status": {"type": ["integer", "null"]},
        "requestId": {"type": ["string", "null"]},
        "details": {"type": "object"},
    },
}


def _components() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (Subscription, "serialization"),
            (ReplayRequest, "validation"),
            (ReplayStatus, "serialization"),
        ],
        ref_template=_REF,
    )
    found: dict[str, Any] = schemas.get("$defs", {})
    request = copy.deepcopy(found["Subscription"])
    request["title"] = "SubscriptionRequest"
    for name in _SERVER_FIELDS:
        request["properties"].pop(name, None)
    request["properties"].pop("volgindicaties", None)
    request["required"] = [r for r in request.get("required", []) if r in request["properties"]]
    found["SubscriptionRequest"] = request
    answer = found["Subscription"]
    answer["properties"].pop("volgindicaties", None)  # never shown (pseudonyms of persons)
    # the owner's current grant may suspend it (`streams.routing.grants`), never stored
    answer["properties"]["status"]["enum"] = ["active", "retired", "suspended"]
    answer["properties"]["suspension"] = {
        "type": "object",
        "description": "why it receives nothing now: its owner's grant no longer covers it",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "enum": list(GRANT_CODES)},
            "message": {"type": "string"},
        },
    }
    created = copy.deepcopy(answer)
    created["title"] = "CreatedSubscription"
    created["properties"]["signingSecret"] = {
        "type": "string",
        "description": "the Standard Webhooks secret (`whsec_…`), shown this once",
    }
    found["CreatedSubscription"] = created
    found["Error"] = {
        "type": "object",
        "required": ["status", "code", "message"],
        "properties": {
            "status": {"type": "integer"},
            "code": {
                "type": "string",
                "description": "stable, for programs; a 403 for a subscription beyond its "
                "owner's grant: " + ", ".join(GRANT_CODES),
            },
            "message": {"type": "string", "description": "for people"},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    }
    found["AuditRecord"] = _AUDIT_RECORD
    found["CloudEvent"] = {
        "type": "object",
        "description": "CloudEvents 1.0, NL GOV profile (SPEC §1); `data` per type's schema",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"type": "string"},
            "subject": {"type": "string"},
            "time": _TIME,
            "datacontenttype": {"type": "string"},
            "dataschema": {"type": "string"},
            "data": {},
        },
    }
    found["Notificatie"] = {
        "type": "object",
        "description": "VNG Notificaties API 1.0 `Kennisgeving` (kanaal `zaken`)",
        "required": ["kanaal", "hoofdObject", "resource", "resourceUrl", "actie", "aanmaakdatum"],
        "properties": {
            "kanaal": {"type": "string"},
            "hoofdObject": {"type": "string", "format": "uri"},
            "resource": {"type": "string"},
            "resourceUrl": {"type": "string", "format": "uri"},
            "actie": {"type": "string"},
            "aanmaakdatum": _TIME,
            "kenmerken": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    found["Volgindicatie"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"einddatum": {"type": ["string", "null"], "format": "date"}},
    }
    return found


def _paths() -> dict[str, Any]:
    one = "/subscriptions/{id}"
    deliveries = {"type": "object", "properties": {"deliveries": {"type": "array"}}}
    page = {
        "type": "object",
        "properties": {
            "deliveries": {"type": "array"},
            "next": {
                "type": ["string", "null"],
                "description": "`before` of the page of older attempts; null: none",
            },
        },
    }
    return {
        "/events": {
            "post": {
                "summary": "publish CloudEvents (structured, batch or binary mode)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/cloudevents+json": {"schema": _ref("CloudEvent")},
                        "application/cloudevents-batch+json": {
                            "schema": {"type": "array", "items": _ref("CloudEvent")}
                        },
                        "application/json": {"schema": {}},
                    },
                },
                "responses": {
                    "202": _answer(
                        "durably in Kafka (acks=all)",
                        {
                            "type": "object",
                            "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
                        },
                    ),
                    **_errors(400, 403, 408, 413, 415, 503),
                },
            }
        },
        "/api/v1/notificaties": {
            "post": {
                "summary": "VNG Notificaties API: a ZGW notificatie becomes zaak-gemuteerd",
                "requestBody": {"required": True, "content": _json(_ref("Notificatie"))},
                "responses": {
                    "201": _answer("published; the notificatie echoed", _ref("Notificatie")),
                    # ZGW clients get the ZGW problem shape (application/problem+json)
                    **{
                        s: _answer(d, {"type": "object"})
                        for s, d in {
                            "400": "invalid notificatie",
                            "401": "no or a wrong JWT/token",
                            "403": "not allowed to publish",
                            "408": "the body did not arrive in time",
                            "413": "too large",
                            "415": "not application/json",
                            "429": "over the client's request rate: wait Retry-After seconds",
                            "503": "Kafka unavailable",
                        }.items()
                    },
                },
            }
        },
        "/health": {
            "get": {
                "summary": "liveness",
                "security": [],
                "responses": {
                    "200": _answer("alive", {"type": "object"}),
                    "503": _answer("the producer is not running", {"type": "object"}),
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "readiness per role (no personal data)",
                "security": [],
                "responses": {
                    "200": _answer("ready", {"type": "object"}),
                    "503": _answer("not ready, with a reason per role", {"type": "object"}),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format",
                "description": "In production only with `Authorization: Bearer` and the "
                "token of `http.metrics_token`, unless `http.public_metrics` is true",
                "security": [],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _answer("no or a wrong metrics token", {"type": "object"}),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": {"200": _answer("OpenAPI 3.1", {"type": "object"})},
            }
        },
        "/subscriptions": {
            "get": {
                "summary": "the caller's subscriptions (an operator's: all)",
                "responses": {
                    "200": _answer("", {"type": "array", "items": _ref("Subscription")}),
                    **_errors(403),
                },
            },
            "post": {
                "summary": "create a subscription (Notificatieservices shape)",
                "requestBody": {"required": True, "content": _json(_ref("SubscriptionRequest"))},
                "responses": {
                    "201": _answer("created", _ref("CreatedSubscription")),
                    **_errors(400, 403, 408, 413, 415, 503),
                },
            },
        },
        one: {
            "parameters": [_id_param()],
            "get": {"responses": {"200": _answer("", _ref("Subscription")), **_errors(403, 404)}},
            "put": {
                "summary": "replace a subscription",
                "requestBody": {"required": True, "content": _json(_ref("SubscriptionRequest"))},
                "responses": {
                    "200": _answer("replaced", _ref("Subscription")),
                    **_errors(400, 403, 404, 408, 413, 415, 503),
                },
            },
            "delete": {
                "summary": "retire a subscription",
                "responses": {"204": {"description": "retired"}, **_errors(403, 404, 503)},
            },
        },
        one + "/volgindicaties/{bsn}": {
            "parameters": [
                _id_param(),
                {"name": "bsn", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "put": {
                "summary": "follow one person (BRP afnemersindicatie)",
                "requestBody": {"required": False, "content": _json(_ref("Volgindicatie"))},
                "responses": {
                    "204": {"description": "followed"},
                    **_errors(400, 403, 404, 408, 413, 503),
                },
            },
            "delete": {
                "summary": "stop following",
                "responses": {
                    "204": {"description": "no longer followed"},
                    **_errors(400, 403, 404, 503),
                },
            },
        },
        one + "/replays": {
            "parameters": [_id_param()],
            "post": {
                "summary": "replay a window or ids into the subscription",
                "requestBody": {"required": True, "content": _json(_ref("ReplayRequest"))},
                "responses": {
                    "202": _answer("started", _ref("ReplayStatus")),
                    **_errors(400, 403, 404, 408, 409, 413, 503),
                },
            },
        },
        one + "/replays/{replay_id}": {
            "parameters": [
                _id_param(),
                {"name": "replay_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": {
                "responses": {"200": _answer("progress", _ref("ReplayStatus")), **_errors(403, 404)}
            },
        },
        one + "/reconciliation": {
            "parameters": [_id_param()],
            "get": {
                "summary": "published vs delivered for a window",
                "parameters": [
                    {
                        **_query("from", "window start (RFC 3339 with zone)", _TIME),
                        "required": True,
                    },
                    {**_query("to", "window end (RFC 3339 with zone)", _TIME), "required": True},
                ],
                "responses": {
                    "200": _answer("", {"type": "object"}),
                    **_errors(400, 403, 404, 503),
                },
            },
            "post": {
                "summary": "the same, with the subscriber's own list of held ids",
                "requestBody": {
                    "required": True,
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["from", "to", "held"],
                            "properties": {
                                "from": _TIME,
                                "to": _TIME,
                                "held": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    ),
                },
                "responses": {
                    "200": _answer("", {"type": "object"}),
                    **_errors(400, 403, 404, 408, 413, 503),
                },
            },
        },
        one + "/events": {
            "parameters": [_id_param()],
            "get": {
                "summary": "pull the subscription's events",
                "parameters": [
                    _query(
                        "after",
                        "a cursor this API gave, a time, or an event id (searched for among"
                        " the last `limits.scan_max_records` records only: else a 404)",
                        {"type": "string"},
                    ),
                    _query("limit", "at most this many", _LIMIT),
                ],
                "responses": {
                    "200": _answer(
                        "",
                        {
                            "type": "object",
                            "properties": {"events": {"type": "array"}, "next": {"type": "string"}},
                        },
                    ),
                    **_errors(400, 403, 404, 503),
                },
            },
        },
        one + "/deliveries": {
            "parameters": [_id_param()],
            "get": {
                "summary": "the delivery log of the subscription",
                "description": "The newest attempts first, page by page: each page in time "
                "order, `next` the `before` of the page older than it. One call reads at most "
                "`limits.scan_max_records` records of the log: a short page with a `next` ran "
                "out of them.",
                "parameters": [
                    _query("limit", "at most this many", _LIMIT),
                    _query("before", "the `next` of an earlier page", {"type": "string"}),
                ],
                "responses": {"200": _answer("", page), **_errors(400, 403, 404, 503)},
            },
        },
        one + "/dlq": {
            "parameters": [_id_param()],
            "get": {
                "summary": "the subscription's dead letters",
                "responses": {
                    "200": _answer(
                        "", {"type": "object", "properties": {"deadLetters": {"type": "array"}}}
                    ),
                    **_errors(403, 404, 503),
                },
            },
        },
        one + "/dlq/redrive": {
            "parameters": [_id_param()],
            "post": {
                "summary": "send the dead letters again (operators)",
                "responses": {
                    "200": _answer(
                        "", {"type": "object", "properties": {"redriven": {"type": "integer"}}}
                    ),
                    **_errors(403, 404, 503),
                },
            },
        },
        "/audit/persons": {
            "post": {
                "summary": "who received data about this person (operators)",
                "requestBody": {
                    "required": True,
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["bsn"],
                            "properties": {"bsn": {"type": "string"}},
                        }
                    ),
                },
                "responses": {
                    "200": _answer("", deliveries),
                    **_errors(400, 403, 408, 413, 503),
                },
            }
        },
        "/audit": {
            "get": {
                "summary": "the audit trail, oldest first (operators)",
                "parameters": [
                    _query("since", "records at or after this time", _TIME),
                    _query("until", "records at or before this time", _TIME),
                    _query("actor", "a client id or `cli:<user>`; a shell pattern", _TEXT),
                    _query("action", "e.g. `subscription_create`; a shell pattern", _TEXT),
                    _query("target", "a subscription id", _TEXT),
                    _query("limit", "at most this many (1 to 1000, default 100)", _LIMIT),
                ],
                "responses": {
                    "200": _answer(
                        "",
                        {
                            "type": "object",
                            "required": ["records"],
                            "properties": {
                                "records": {"type": "array", "items": _ref("AuditRecord")}
                            },
                        },
                    ),
                    **_errors(400, 403, 503),
                },
            }
        },
    }


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once; the same for every caller)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gemeentebus",
            "version": "1",
            "description": "The event bus of Dutch municipalities and base registries (SPEC §4).",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _components(),
        },
        "paths": _paths(),
    }
