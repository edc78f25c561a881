"""The intake rules a subscription must meet, wherever it comes in (the HTTP API, the CLI).

Who owns it and under which purpose (`client_of`, `purpose_of`), whether its types lie
within the owner's purpose binding (`check_purpose`), which fields only the bus sets
(`SERVER_FIELDS`, `server_owned`), its signing secret (`new_signing_secret`), and its
validation errors as field-level entries that never repeat a value (`validation_errors`).
The callers turn these into their own answers (an HTTP 400/403, a CLI error line).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from streams.auth import Authenticator, Client
from streams.config import ClientConfig, Settings
from streams.contract.schemas import registry
from streams.routing.filters import DIALECTS, InvalidFilter
from streams.routing.subscriptions import schema_fields

__all__ = [
    "SERVER_FIELDS",
    "check_purpose",
    "client_from",
    "client_of",
    "new_signing_secret",
    "purpose_of",
    "server_owned",
    "validation_errors",
]

# Set by the bus, never by a client: ignored in a body, so a GET answer can be PUT back.
SERVER_FIELDS: Final = frozenset(
    {"id", "owner", "purpose", "created", "status", "volgindicaties", "signingSecret"}
)
# Standard Webhooks: at least 24 random bytes; 32 is what most senders use.
_SECRET_BYTES: Final = 32


def new_signing_secret() -> str:
    """A fresh Standard Webhooks signing secret: `whsec_` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def purpose_of(client: Client) -> str:
    """The purpose a client's subscriptions are bound to: its configured one, or its id."""
    if client.subscribe is not None and client.subscribe.purpose:
        return client.subscribe.purpose
    return client.id


def client_of(settings: Settings, client_id: str) -> Client | None:
    """The configured client with this id (its grants), or None."""
    for config in settings.clients:
        if config.id == client_id:
            return client_from(config)
    return None


def client_from(config: ClientConfig) -> Client:
    """A configured client (its grants) as a `Client`."""
    return Client(
        id=config.id,
        via="token",
        publish=config.publish,
        subscribe=config.subscribe,
        operator=config.operator,
    )


def check_purpose(auth: Authenticator, owner: Client, types: object) -> None:
    """`streams.auth.Forbidden` naming the first type outside the owner's purpose binding.

    An operator without a subscribe grant has no binding; malformed `types` are left to
    validation.
    """
    if not isinstance(types, list | tuple) or not all(isinstance(t, str) for t in types):
        return
    if owner.subscribe is None and owner.operator:
        return
    for event_type in types:
        auth.authorize_subscribe(owner, event_type)


def server_owned(key: str) -> bool:
    """Whether a body key names a field only the bus sets (in camelCase or snake_case)."""
    return to_camel(key) in SERVER_FIELDS


def validation_errors(exc: ValidationError, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Field-level errors (`path`, `code`, `message`) of a rejected subscription.

    No message repeats a value from the input: unknown types and fields are named by their
    position (`types[1]`, `fields[0]`), filters by the path the filter compiler reports.
    """
    errors: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc: tuple[int | str, ...] = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        cause = error.get("ctx", {}).get("error")
        if loc == ("types",) and message.startswith("unknown event type"):
            errors.extend(_unknown_types(body.get("types")))
        elif loc:
            errors.append({"path": _path(loc), "code": error["type"], "message": message})
        elif isinstance(cause, InvalidFilter):
            errors.append(_filter_error(cause))
        elif message.startswith("fields: "):
            errors.extend(_unknown_fields(body.get("fields"), body.get("types")))
        else:
            field, sep, rest = message.partition(": ")
            known = sep and field.isidentifier()
            errors.append(
                {
                    "path": field if known else "",
                    "code": "invalid_subscription",
                    "message": rest if known else message,
                }
            )
    return errors


def _path(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _filter_error(cause: InvalidFilter) -> dict[str, Any]:
    if cause.reason.startswith("unknown filter dialect"):
        message = f"unknown filter dialect; expected one of {', '.join(DIALECTS)}"
        return {"path": cause.path, "code": "unknown_dialect", "message": message}
    code = "unknown_attribute" if cause.reason.startswith("unknown attribute") else "invalid_filter"
    return {"path": cause.path, "code": code, "message": cause.reason}


def _unknown_types(types: object) -> list[dict[str, Any]]:
    known = registry().types()
    listed = types if isinstance(types, list | tuple) else []
    return [
        {"path": f"types[{i}]", "code": "unknown_type", "message": "the bus knows no such type"}
        for i, event_type in enumerate(listed)
        if event_type not in known
    ]


def _unknown_fields(fields: object, types: object) -> list[dict[str, Any]]:
    names = [t for t in types if isinstance(t, str)] if isinstance(types, list | tuple) else []
    known = frozenset().union(*(schema_fields(t) for t in names))
    message = f"no field of the schema of {' or '.join(names)}"
    listed = fields if isinstance(fields, list | tuple) else []
    return [
        {"path": f"fields[{i}]", "code": "unknown_field", "message": message}
        for i, path in enumerate(listed)
        if path not in known
    ]
